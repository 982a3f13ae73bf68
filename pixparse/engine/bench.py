"""`pixparse bench`: time optimizer steps of a real engine, warmup excluded.

The window starts after `warmup_steps` and is closed by a device synchronize and a barrier, so
queued GPU work is inside it. Per GPU and global: samples/s, image and text tokens/s, model
TFLOP/s per device, MFU (dtype and the peak used are reported), peak memory, data-wait share.
"""
import itertools
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from pixparse.data.loader import LAST_SKIPPED_KEY, SKIPPED_KEY
from pixparse.engine.throughput import mfu


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dist.barrier()


def _batches(trainer: Any, synthetic: bool) -> Iterator[dict[str, torch.Tensor]]:
    if synthetic:
        g = torch.Generator().manual_seed(trainer.train_cfg.seed + trainer.rank)
        batch = trainer.task.synthetic_batch(trainer.data_cfg.batch_size, g)
        return itertools.repeat(batch)
    trainer.loader.set_interval(0)

    def endless() -> Iterator[dict[str, torch.Tensor]]:
        for interval in itertools.count():
            trainer.loader.set_interval(interval)
            yield from trainer.loader

    return endless()


def benchmark(trainer: Any, synthetic: bool, warmup_steps: int, steps: int) -> dict[str, Any]:
    engine, device = trainer.engine, trainer.engine.device
    engine.train()
    batches = _batches(trainer, synthetic)
    totals = torch.zeros(5, dtype=torch.float64)  # samples, text tokens, image tokens, flops, data_s
    start = 0.0
    for step in range(warmup_steps + steps):
        if step == warmup_steps:
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            totals.zero_()
            start = time.perf_counter()
        for _ in range(trainer.accum):
            t0 = time.perf_counter()
            batch = next(batches)
            data_s = time.perf_counter() - t0
            batch = {k: v for k, v in batch.items() if k not in (SKIPPED_KEY, LAST_SKIPPED_KEY)}
            _, work = trainer.micro_step(batch)  # the step the trainer runs
            totals += torch.tensor([batch["input_ids"].shape[0], work["text_tokens"], work["image_tokens"],
                                    work["flops"], data_s], dtype=torch.float64)
    _sync(device)
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    dist.all_reduce(totals)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    memory = torch.tensor([torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0],
                          dtype=torch.float64)
    dist.all_reduce(memory, op=dist.ReduceOp.MAX)
    samples, text_tokens, image_tokens, flops, data_s = totals.tolist()
    wall = elapsed.item()
    world = trainer.world_size
    tflops = flops / wall / world / 1e12
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    utilization = mfu(tflops, trainer.peak_tflops)
    return {
        "device": device_name,
        "world_size": world,
        "dtype": trainer.dtype_name,
        "synthetic_data": synthetic,
        "warmup_steps": warmup_steps,
        "steps": steps,
        "global_batch_size": trainer.plan.global_batch_size,
        "step_s": wall / steps,
        "samples_per_s": samples / wall,
        "samples_per_s_per_device": samples / wall / world,
        "text_tokens_per_s": text_tokens / wall,
        "image_tokens_per_s": image_tokens / wall,
        "tflops_per_device": tflops,
        "peak_tflops": trainer.peak_tflops,
        "mfu": utilization,
        "max_memory_gib": memory.item() if device.type == "cuda" else None,
        "data_wait_pct": 100.0 * data_s / world / wall,
    }


def format_report(r: dict[str, Any]) -> str:
    mfu_text = f"{100 * r['mfu']:.1f}% of {r['peak_tflops']:.0f}" if r["mfu"] is not None else "n/a (no peak known)"
    memory = f"{r['max_memory_gib']:.2f}" if r["max_memory_gib"] is not None else "n/a (CPU)"
    rows = [
        ("model", r.get("model", "")),
        ("device x ranks", f"{r['device']} x {r['world_size']}"),
        ("dtype", r["dtype"]),
        ("data", "synthetic (one CPU batch, copied to the device each step)" if r["synthetic_data"] else "loader"),
        ("steps timed (warmup)", f"{r['steps']} ({r['warmup_steps']})"),
        ("global batch", r["global_batch_size"]),
        ("step time s", f"{r['step_s']:.4f}"),
        ("samples/s global | per device", f"{r['samples_per_s']:.1f} | {r['samples_per_s_per_device']:.1f}"),
        ("image tokens/s global", f"{r['image_tokens_per_s']:.0f}"),
        ("text tokens/s global", f"{r['text_tokens_per_s']:.0f}"),
        ("TFLOP/s per device", f"{r['tflops_per_device']:.3g}"),
        ("MFU (dense peak TFLOP/s)", mfu_text),
        ("peak memory GiB", memory),
        ("data wait %", f"{r['data_wait_pct']:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
