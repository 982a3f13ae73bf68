"""Memory of model states per rank (ZeRO-2 vs ZeRO-3) and activation memory with and without
activation checkpointing, for a preset (default cruller_base).

Activation memory (one process, any device):
    python benchmarks/bench_memory.py activations --model cruller_base --batch_size 1 --text_len 512
Model states per rank (run under a launcher, once per ZeRO stage):
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 benchmarks/bench_memory.py states --zero 2
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 benchmarks/bench_memory.py states --zero 3
Peak host memory (RSS) per rank of building a task's model and deepspeed.initialize under ZeRO-3,
with the model built partitioned (zero.Init, the engine's default) or in full on every rank first:
    DS_ACCELERATOR=cpu torchrun --standalone --nproc_per_node 2 benchmarks/bench_memory.py build \
        --model cruller_large --tokenizer ../shared/data/tokenizers/albert_spiece.model --zero_init true

Bytes are counted on the tensors themselves (saved-for-backward hooks; DeepSpeed's partitions and
optimizer state), so the numbers mean the same on CPU and GPU. A human table first, one JSON
line last.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pixparse.engine.throughput import count_saved_activations  # noqa: E402
from pixparse.models import create_model, get_model_config  # noqa: E402

GIB = 2**30
VOCAB = 50265  # BART's vocabulary, as the base/large presets use


def _batch(model, batch_size: int, text_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = model.cfg.image_encoder.image_size
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch_size, model.cfg.image_encoder.in_chans, h, w, generator=g).to(dtype)
    return image, torch.randint(0, VOCAB, (batch_size, text_len), generator=g)


def activations(args: argparse.Namespace) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for encoder, decoder in ((False, False), (True, False), (False, True), (True, True)):
        torch.manual_seed(0)
        model = create_model(get_model_config(args.model), VOCAB, 1, 2).train()
        model.image_encoder.set_grad_checkpointing(encoder)
        model.text_decoder.set_grad_checkpointing(decoder)
        image, ids = _batch(model, args.batch_size, args.text_len, torch.float32)
        start = time.perf_counter()
        with count_saved_activations(exclude=model.parameters()) as saved:
            loss = model(image, ids, torch.ones_like(ids)).float().logsumexp(-1).mean()
        loss.backward()
        activation = saved["bytes"]
        rows.append({"encoder_ckpt": encoder, "decoder_ckpt": decoder, "activation_gib": activation / GIB,
                     "step_s": time.perf_counter() - start})
    base = rows[0]["activation_gib"]
    print(f"{args.model}, batch {args.batch_size}, text {args.text_len} tokens, fp32 activations saved for backward")
    print(f"{'encoder ckpt':>12} {'decoder ckpt':>12} {'activations GiB':>16} {'vs none':>8} {'fwd+bwd s':>10}")
    for r in rows:
        print(f"{str(r['encoder_ckpt']):>12} {str(r['decoder_ckpt']):>12} {r['activation_gib']:16.3f} "
              f"{r['activation_gib'] / base:8.2f} {r['step_s']:10.2f}")
    print(json.dumps({"bench": "activations", "model": args.model, "batch_size": args.batch_size,
                      "text_len": args.text_len, "rows": rows}))


def _tensor_bytes(obj) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _init(stage: int, bf16: bool, **zero) -> tuple[int, int, dict]:
    """Process group up; (rank, world size, a DeepSpeed dict for one sample per rank)."""
    import torch.distributed as dist

    from pixparse.engine.dist import init_distributed

    init_distributed()
    world = dist.get_world_size()
    return dist.get_rank(), world, {
        "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": world,
        "bf16": {"enabled": bf16}, "gradient_clipping": 1.0, "steps_per_print": 10**9,
        "zero_optimization": {"stage": stage, **zero},
    }


def states(args: argparse.Namespace) -> None:
    import deepspeed
    import torch.distributed as dist

    from pixparse.engine.optim import create_optimizer
    from pixparse.tasks.config import OptimConfig

    rank, world, ds_config = _init(args.zero, bf16=True, stage3_param_persistence_threshold=0)
    torch.manual_seed(0)
    model = create_model(get_model_config(args.model), VOCAB, 1, 2)
    num_params = sum(p.numel() for p in model.parameters())
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=create_optimizer(model, OptimConfig()), config=ds_config)
    image, ids = _batch(model, 1, args.text_len, torch.bfloat16)
    start = time.perf_counter()
    logits = engine(image.to(engine.device), ids.to(engine.device), torch.ones_like(ids).to(engine.device))
    engine.backward(logits.float().logsumexp(-1).mean())
    engine.step()
    step_s = time.perf_counter() - start
    params = sum((p.ds_tensor if hasattr(p, "ds_tensor") else p).numel() * p.element_size()
                 for p in engine.module.parameters())
    # fp32 master partitions: stage 1/2 and stage 3 keep them under different names
    master_groups = (getattr(optimizer, "single_partition_of_fp32_groups", None)
                     or getattr(optimizer, "fp32_partitioned_groups_flat", None))
    if master_groups is None:
        raise RuntimeError(f"unknown ZeRO optimizer {type(optimizer).__name__}: no fp32 partitions found")
    master = _tensor_bytes(master_groups)
    adam = sum(_tensor_bytes(s) for s in optimizer.optimizer.state.values())
    row = torch.tensor([params, master, adam, step_s], dtype=torch.float64)
    rows = [torch.zeros_like(row) for _ in range(world)]
    dist.all_gather(rows, row)
    if rank == 0:
        print(f"{args.model} ({num_params / 1e6:.1f}M params), ZeRO-{args.zero}, bf16, {world} ranks: "
              f"model states per rank")
        print(f"{'rank':>4} {'bf16 params GiB':>16} {'fp32 master GiB':>16} {'Adam state GiB':>15} {'total GiB':>10}")
        out = []
        for r, t in enumerate(rows):
            p, m, a, s = t.tolist()
            out.append({"rank": r, "params_gib": p / GIB, "master_gib": m / GIB, "adam_gib": a / GIB,
                        "total_gib": (p + m + a) / GIB, "step_s": s})
            print(f"{r:>4} {p / GIB:16.3f} {m / GIB:16.3f} {a / GIB:15.3f} {(p + m + a) / GIB:10.3f}")
        print(json.dumps({"bench": "model_states", "model": args.model, "zero": args.zero,
                          "world_size": world, "num_params": num_params, "rows": out}))


def _peak_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def build(args: argparse.Namespace) -> None:
    import contextlib

    import deepspeed
    import torch.distributed as dist

    from pixparse.engine.optim import create_optimizer
    from pixparse.models import zero_init
    from pixparse.tasks.config import OptimConfig, TaskConfig
    from pixparse.tasks.registry import create_task

    rank, world, ds_config = _init(3, bf16=False)
    before = _peak_rss_gib()
    torch.manual_seed(0)
    build_ctx = zero_init.partitioned_build(ds_config) if args.zero_init == "true" else contextlib.nullcontext()
    start = time.perf_counter()
    with build_ctx:
        task = create_task(TaskConfig(model_name=args.model, tokenizer=args.tokenizer))
    build_s = time.perf_counter() - start
    after_build = _peak_rss_gib()
    num_params = sum(getattr(p, "ds_numel", p.numel()) for p in task.parameters())
    deepspeed.initialize(model=task, optimizer=create_optimizer(task, OptimConfig()), config=ds_config)
    row = torch.tensor([before, after_build, _peak_rss_gib(), build_s], dtype=torch.float64)
    rows = [torch.zeros_like(row) for _ in range(world)]
    dist.all_gather(rows, row)
    if rank == 0:
        print(f"{args.model} ({num_params / 1e6:.1f}M params), ZeRO-3 fp32, {world} ranks, zero.Init "
              f"{args.zero_init}: peak RSS per rank")
        print(f"{'rank':>4} {'imports GiB':>12} {'after build GiB':>16} {'after initialize GiB':>21} {'build s':>8}")
        out = []
        for r, t in enumerate(rows):
            b, a, i, s = t.tolist()
            out.append({"rank": r, "rss_imports_gib": b, "rss_build_gib": a, "rss_initialize_gib": i, "build_s": s})
            print(f"{r:>4} {b:12.2f} {a:16.2f} {i:21.2f} {s:8.1f}")
        print(json.dumps({"bench": "build_rss", "model": args.model, "zero_init": args.zero_init == "true",
                          "world_size": world, "num_params": num_params, "rows": out}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["activations", "states", "build"])
    parser.add_argument("--model", default="cruller_base")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--text_len", type=int, default=512)
    parser.add_argument("--zero", type=int, default=2, choices=[1, 2, 3])
    parser.add_argument("--tokenizer", default=None, help="build: --task.tokenizer (a local SentencePiece model)")
    parser.add_argument("--zero_init", default="true", choices=["true", "false"],
                        help="build: the model built partitioned (zero.Init) or in full on every rank")
    parser.add_argument("--local_rank", type=int, default=-1)  # set by the deepspeed launcher
    args = parser.parse_args()
    {"activations": activations, "states": states, "build": build}[args.what](args)


if __name__ == "__main__":
    main()
