"""Where a reading-pretraining step's time goes: the loader worker's work per sample (render,
then decode/resize/augment and tokenize, then collate) measured in this process, and the
engine's phases (forward, backward, step) on rank 0 at 1 and N ranks (`bench_train.py --phases
--world_size N`: what N ranks add to backward and step is communication).

    python benchmarks/profile_reading.py --world_size 2 --threads 1

Prints a table, then one JSON line (per-sample ms of each worker stage, samples/s one worker
renders, the engine's phases), and saves it with the command, git sha and CPU to --out.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def worker_cost(model: str, source: str, samples: int, batch_size: int) -> dict[str, float]:
    """ms per sample of render, preprocess (resize/pad to the encoder's input, tokenize) and
    collate, as one loader worker does them, in this process."""
    import torch

    from pixparse.data.config import DataLoaderConfig
    from pixparse.data.render import render_samples
    from pixparse.tasks.config import TaskConfig
    from pixparse.tasks.registry import create_task

    torch.set_num_threads(1)
    task = create_task(TaskConfig(name="read_pretrain", model_name=model))
    cfg = DataLoaderConfig(source=source, batch_size=batch_size, num_samples=samples, resampled=True)
    prep, collate = task.preprocess(cfg), task.collate(cfg)
    rng = random.Random(0)
    times = {"render": 0.0, "preprocess": 0.0, "collate": 0.0}
    done, draw, items = 0, 0, []
    while done < samples:
        stream = render_samples(source, "profile", draw)
        while True:
            t0 = time.perf_counter()
            sample = next(stream, None)
            t1 = time.perf_counter()
            if sample is None:
                break
            items += prep(sample, rng)
            t2 = time.perf_counter()
            times["render"] += t1 - t0
            times["preprocess"] += t2 - t1
            done += 1
            if len(items) == batch_size:
                t3 = time.perf_counter()
                collate(items)
                times["collate"] += time.perf_counter() - t3
                items = []
            if done == samples:
                break
        draw += 1
    out = {k: 1000 * v / samples for k, v in times.items()}
    out["total"] = sum(out.values())
    out["samples_per_s"] = 1000 / out["total"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cruller_reader_tiny")
    p.add_argument("--source", default="render:lines")
    p.add_argument("--samples", type=int, default=2048, help="samples the worker-cost part renders")
    p.add_argument("--batch_size", type=int, default=16, help="per rank, as the reading check trains")
    p.add_argument("--world_size", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    args = p.parse_args()
    from bench_train import _env_info, save_result

    worker = worker_cost(args.model, args.source, args.samples, args.batch_size)
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "bench_train.py"), "--phases", "--world_size",
           str(args.world_size), "--model", args.model, "--batch_size", str(args.batch_size), "--variants",
           "zero2_fp32", "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"bench_train --phases failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    phases = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"loader worker, {args.source} -> {args.model}, ms per sample (one process, {args.samples} samples): "
          + " | ".join(f"{k} {v:.2f}" for k, v in worker.items() if k != "samples_per_s")
          + f" | {worker['samples_per_s']:.0f} samples/s per worker")
    print(f"engine (ZeRO-2 fp32, synthetic batches of {args.batch_size} per rank), ms per step on rank 0:")
    names = list(next(iter(phases.values())))
    print("| ranks | " + " | ".join(names) + " |\n" + "|---" * (len(names) + 1) + "|")
    for key, table in phases.items():
        print(f"| {key.rsplit('@', 1)[1]} | " + " | ".join(f"{table[n]:.2f}" for n in names) + " |")
    record = {"summary": {"worker_ms_per_sample": worker, "engine_phases_ms": phases}, "args": vars(args),
              "command": " ".join(["python", *sys.argv]), **_env_info()}
    save_result(args.out, f"profile_reading_{args.model}_{args.world_size}ranks", record)


if __name__ == "__main__":
    main()
