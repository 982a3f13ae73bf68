"""Reading probe: does a preset start reading at this LR? One process, no DeepSpeed, a few minutes.

Trains a reader from scratch on `render:lines` (AdamW, a linear warmup then constant, clipping at
1.0, batch 16) and, every `--every` steps, scores 64 held-out rendered lines of another seed: the
teacher-forced loss, `image_gap` (the loss with another line's image minus the loss with its own,
nats per target token) and greedy CER. A model that ignores the image keeps image_gap near 0
whatever its loss does; in the runs of docs/reading.md, readers that went on to read had an
image_gap above 1 by 32k samples. The full check (2 ranks, the engine, 102k samples) is
benchmarks/reading_check.sh.

    OMP_NUM_THREADS=1 python benchmarks/reading_probe.py pali_reader_tiny --lr 5e-4 --steps 2000

Prints one JSON object per evaluation.
"""
import argparse
import json
import time

import torch
from rapidfuzz.distance import Levenshtein

from pixparse.data.config import DataLoaderConfig
from pixparse.data.loader import create_loader
from pixparse.tasks.config import TaskConfig
from pixparse.tasks.registry import create_task


def held_out_scores(task, batch) -> dict[str, float]:
    """Held-out loss and image_gap as the eval app sums them (TaskBase.eval_batch: one pass with
    the sample's own image, one with another's, then greedy generation); CER as plain edit distance
    over reference characters (no stripping, unlike jiwer in the eval app)."""
    task.eval()
    own, rolled, num_tokens, texts = task.eval_batch(batch, None)
    task.train()
    truths = [task.decode([t for t in row.tolist() if t != -100]) for row in batch["labels"]]
    tokens = num_tokens.sum()
    cer = sum(Levenshtein.distance(p, t) for p, t in zip(texts, truths)) / sum(len(t) for t in truths)
    return {"heldout_loss": round(float(own.sum() / tokens), 4),
            "image_gap": round(float((rolled.sum() - own.sum()) / tokens), 4),
            "cer": round(cer, 4), "example": [texts[0], truths[0]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ctc", type=float, default=0.0, help="auxiliary CTC weight (--task.ctc_weight)")
    ap.add_argument("--every", type=int, default=500, help="steps between evaluations")
    ap.add_argument("--batch_size", type=int, default=16)
    args = ap.parse_args()

    torch.manual_seed(0)
    task = create_task(TaskConfig(name="read_pretrain", model_name=args.preset, ctc_weight=args.ctc))
    params = [p for p in task.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05, betas=(0.9, 0.98))
    train = DataLoaderConfig(source="render:lines", resampled=True, batch_size=args.batch_size, num_workers=1,
                             shuffle_buffer=64, num_samples=args.steps * args.batch_size)
    loader = create_loader(train, task.preprocess(train), task.collate(train), args.steps, 0, 1, 0)
    loader.set_interval(0)
    held = DataLoaderConfig(source="render:lines", resampled=True, batch_size=64, num_workers=0, shuffle_buffer=0,
                            num_samples=64)
    held_loader = create_loader(held, task.preprocess(held), task.collate(held), 1, 0, 1, 999)  # its own seed
    held_loader.set_interval(0)
    held_batch = next(iter(held_loader))

    start, losses = time.time(), []
    for step, batch in enumerate(loader, 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / args.warmup)
        loss = task(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % args.every == 0 or step == args.steps:
            print(json.dumps({"preset": args.preset, "lr": args.lr, "ctc": args.ctc, "step": step,
                              "samples": step * args.batch_size, "train_loss": round(sum(losses) / len(losses), 4),
                              **held_out_scores(task, held_batch), "seconds": round(time.time() - start)}),
                  flush=True)
            losses = []


if __name__ == "__main__":
    main()
