"""Run on 2 ranks: each tiny preset built in full and built partitioned (zero.Init); rank 0 writes,
per parameter, the full shape, the share of it this rank holds, mean and std of both builds, the
optimizer's no-decay names of both, and the loss of two ZeRO-3 steps of the partitioned build."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402


def stats(task) -> dict:
    import deepspeed

    out = {}
    for name, p in task.named_parameters():
        held = p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
        with deepspeed.zero.GatheredParameters([p]):
            full = p.detach().float()
            out[name] = {"shape": list(full.shape), "held": held, "mean": full.mean().item(),
                         "std": full.std().item() if full.numel() > 1 else 0.0}
    return out


def main(out_path: str) -> None:
    import deepspeed
    import torch.distributed as dist

    from pixparse.engine.dist import init_distributed
    from pixparse.engine.optim import create_optimizer, no_decay_names
    from pixparse.models.zero_init import partitioned_build
    from pixparse.tasks.config import OptimConfig, TaskConfig
    from pixparse.tasks.registry import create_task

    init_distributed()
    ds = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 4,
          "gradient_clipping": 1.0, "steps_per_print": 10**9, "zero_optimization": {"stage": 3}}
    result = {}
    for preset in ("cruller_tiny", "pix2struct_tiny", "pali_tiny"):
        torch.manual_seed(0)
        full = create_task(TaskConfig(model_name=preset))
        torch.manual_seed(0)
        with partitioned_build(ds):
            part = create_task(TaskConfig(model_name=preset))
        entry = {"full": stats(full), "partitioned": stats(part),
                 "no_decay_full": sorted(no_decay_names(full)), "no_decay_partitioned": sorted(no_decay_names(part))}
        engine, *_ = deepspeed.initialize(model=part, optimizer=create_optimizer(part, OptimConfig()), config=ds)
        batch = part.synthetic_batch(2, torch.Generator().manual_seed(dist.get_rank()))
        losses = []
        for _ in range(2):
            loss = engine(batch)["loss"]
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        entry["losses"] = losses
        result[preset] = entry
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
