"""DeepSpeed ZeRO settings on N ranks against DDP and FSDP2: each setting a copy of
ds_configs/zero{2,3}_<dtype>.json with some `zero_optimization` keys changed (`zero0`: zero2's
with `zero_optimization` {"stage": 0}, DeepSpeed's data parallel without ZeRO), launched as
`bench_train.py --world_size N` launches its variants (a fresh launch each, interleaved rounds,
the slowest rank's mean step, median of rounds).

    python benchmarks/bench_zero_settings.py --model cruller_tiny --batch_size 8 --rounds 2 --steps 30

Prints a table (s/step and against DDP) and one JSON line; saves it with the command, git sha
and CPU to --out.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train  # noqa: E402

# name: (stage, zero_optimization keys changed from ds_configs/zero{stage}_<dtype>.json)
SETTINGS: dict[str, tuple[int, dict]] = {
    "zero0": (0, {}),
    "zero2": (2, {}),
    "zero2 overlap_comm off": (2, {"overlap_comm": False}),
    "zero2 overlap_comm, contiguous_gradients off": (2, {"overlap_comm": False, "contiguous_gradients": False}),
    "zero2 all-reduce instead of reduce-scatter": (2, {"overlap_comm": False, "reduce_scatter": False}),
    "zero3": (3, {}),
    "zero3 overlap_comm off": (3, {"overlap_comm": False}),
    "zero3 persistence threshold 1e6": (3, {"stage3_param_persistence_threshold": 1e6}),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cruller_tiny")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--world_size", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS per rank")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--settings", default=",".join(SETTINGS), help="which, by name (default: all)")
    p.add_argument("--out", default=os.path.join(bench_train.REPO, "benchmarks", "results"))
    args = p.parse_args()
    chosen = args.settings.split(",")
    unknown = [n for n in chosen if n not in SETTINGS]
    if unknown:
        sys.exit(f"--settings {','.join(unknown)}: not a setting; the settings are: {', '.join(SETTINGS)}")

    dirs = {}
    for name in chosen:
        stage, changes = SETTINGS[name]
        with open(os.path.join(bench_train.REPO, "ds_configs", f"zero{max(stage, 2)}_{args.dtype}.json")) as f:
            config = json.load(f)
        if stage == 0:
            config["zero_optimization"] = {"stage": 0}
        config["zero_optimization"].update(changes)
        dirs[name] = tempfile.mkdtemp(prefix="zero_settings_")
        with open(os.path.join(dirs[name], f"zero{stage}_{args.dtype}.json"), "w") as f:
            json.dump(config, f)
    runs = ["ddp", "fsdp", *chosen]
    results: dict[str, list[float]] = {r: [] for r in runs}
    for r in range(args.rounds):
        for name in runs:
            variant = name if name in ("ddp", "fsdp") else f"zero{SETTINGS[name][0]}"
            launch = argparse.Namespace(**vars(args), ds_configs=dirs.get(name, ""))
            step = bench_train.spawn_dist(launch, f"{variant}_{args.dtype}", args.world_size)["step_s"]
            results[name].append(step)
            print(f"round {r + 1}/{args.rounds} {name}: {step:.4f} s/step", file=sys.stderr, flush=True)
    median = {n: statistics.median(t) for n, t in results.items()}
    print(f"model {args.model}, batch {args.batch_size} per rank, {args.world_size} ranks, {args.rounds} round(s)")
    print("| setting | changed | s/step | vs ddp | vs fsdp | rounds |\n|---|---|---|---|---|---|")
    for name in runs:
        changed = json.dumps(SETTINGS[name][1]) if name in SETTINGS else "-"
        print(f"| {name} | {changed} | {median[name]:.4f} | {median[name] / median['ddp']:.3f}x | "
              f"{median[name] / median['fsdp']:.3f}x | {', '.join(f'{t:.4f}' for t in results[name])} |")
    record = {"summary": {n: round(s / median["ddp"], 4) for n, s in median.items()}, "median_step_s": median,
              "rounds": results, "settings": {n: SETTINGS[n][1] for n in chosen}, "args": vars(args),
              "command": " ".join(["python", *sys.argv]), **bench_train._env_info()}
    bench_train.save_result(args.out, f"bench_zero_settings_{args.world_size}ranks_{args.model}_b{args.batch_size}",
                            record)


if __name__ == "__main__":
    main()
