"""Generation speed: pixparse's cached generation against the uncached greedy loop that
huggingface/pixparse ran (the decoder re-run on the whole prefix at every step).

Both sides encode the page once, decode greedily for exactly --new_tokens tokens (eos is not
allowed to end a sample early, so both do the same work) with one intra-op thread, and must give
the same tokens. Weights are random, with the token embeddings scaled x8 so that no argmax is
decided by float rounding between the two (a random decoder's logits are nearly flat).

    python benchmarks/bench_generate.py --models cruller_tiny cruller_tiny --batch_sizes 8 32
    python benchmarks/bench_generate.py --models cruller_base --batch_sizes 1 --rounds 1 \
        --tokenizer ../shared/data/tokenizers/albert_spiece.model

Prints a table, then one JSON line: {"new_tokens": 256, "speedup": <min over models>, "results": [...]}.
"""
import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pixparse.tasks.config import TaskConfig  # noqa: E402
from pixparse.tasks.registry import create_task  # noqa: E402


@torch.no_grad()
def uncached_greedy(task, image: torch.Tensor, start: int, new_tokens: int) -> torch.Tensor:
    """huggingface/pixparse's loop: full prefix through the decoder at every step, no cache."""
    dec = task.model.text_decoder.model
    image_tokens, _ = task.model.encode(task.normalize(image))
    ids = torch.full((image.shape[0], 1), start, dtype=torch.long)
    for _ in range(new_tokens):
        logits = dec(input_ids=ids, encoder_hidden_states=image_tokens, use_cache=False).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids[:, 1:]


@torch.no_grad()
def cached_greedy(task, image: torch.Tensor, start: int, new_tokens: int) -> torch.Tensor:
    """pixparse's generate (self-attention cached, cross-attention keys/values computed once)."""
    out = task.generate({"image": image}, [[start]] * image.shape[0], max_new_tokens=new_tokens, stop_at_eos=False)
    return torch.tensor(out)


def bench_model(name: str, batch_size: int, new_tokens: int, rounds: int, tokenizer: str | None) -> dict:
    torch.manual_seed(0)
    task = create_task(TaskConfig(model_name=name, max_length=new_tokens + 8, tokenizer=tokenizer)).eval()
    with torch.no_grad():
        task.model.text_decoder.model.get_input_embeddings().weight.mul_(8.0)
    enc = task.model_cfg.image_encoder
    image = torch.randint(0, 256, (batch_size, enc.in_chans, *enc.image_size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1))
    start = task.tokenizer.convert_tokens_to_ids(task.prompt)
    cached_greedy(task, image, start, 4)  # warm-up (allocator, first-call paths)
    times = {"cached": [], "uncached": []}
    outputs = {}
    for _ in range(rounds):  # interleaved rounds, median reported
        for side, fn in (("cached", cached_greedy), ("uncached", uncached_greedy)):
            t0 = time.perf_counter()
            outputs[side] = fn(task, image, start, new_tokens)
            times[side].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    same = torch.equal(outputs["cached"], outputs["uncached"])
    tokens = batch_size * new_tokens
    return {
        "model": name, "batch_size": batch_size, "new_tokens": new_tokens, "rounds": rounds,
        "cached_s": med["cached"], "uncached_s": med["uncached"],
        "cached_tokens_per_s": tokens / med["cached"], "uncached_tokens_per_s": tokens / med["uncached"],
        "speedup": med["uncached"] / med["cached"], "same_tokens": same,
        "params_m": sum(p.numel() for p in task.parameters()) / 1e6, "vocab": len(task.tokenizer),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["cruller_tiny"])
    ap.add_argument("--batch_sizes", nargs="+", type=int, default=[8],
                    help="one for all models or one per model (the uncached loop at cruller_base takes minutes)")
    ap.add_argument("--new_tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokenizer", default=None,
                    help="tokenizer spec for every model (offline: e.g. ../shared/data/tokenizers/albert_spiece.model "
                         "for cruller_base, whose default is a hub name); unset: each preset's own")
    ap.add_argument("--output", default=None, help="also write the JSON here")
    args = ap.parse_args()
    if len(args.batch_sizes) not in (1, len(args.models)):
        raise SystemExit("--batch_sizes: give one value, or one per model")
    sizes = args.batch_sizes * len(args.models) if len(args.batch_sizes) == 1 else args.batch_sizes
    torch.set_num_threads(args.threads)
    results = [bench_model(m, b, args.new_tokens, args.rounds, args.tokenizer) for m, b in zip(args.models, sizes)]
    print(f"{'model':<14}{'batch':>6}{'tokens':>8}{'cached s':>10}{'uncached s':>12}"
          f"{'cached tok/s':>14}{'uncached tok/s':>16}{'speedup':>9}{'same':>6}")
    for r in results:
        print(f"{r['model']:<14}{r['batch_size']:>6}{r['new_tokens']:>8}{r['cached_s']:>10.2f}{r['uncached_s']:>12.2f}"
              f"{r['cached_tokens_per_s']:>14.0f}{r['uncached_tokens_per_s']:>16.0f}{r['speedup']:>8.1f}x"
              f"{'yes' if r['same_tokens'] else 'NO':>6}")
    report = {"new_tokens": args.new_tokens, "speedup": min(r["speedup"] for r in results),
              "threads": args.threads, "cpu": platform.processor() or platform.machine(),
              "torch": torch.__version__, "results": results}
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
