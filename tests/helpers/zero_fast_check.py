"""Run on 1 or 2 ranks: for ZeRO stages 1, 2 and 3, cruller_tiny trained 3 steps of 2
accumulated micro-batches (each rank its own) by DeepSpeed as it is and by DeepSpeed with
pixparse's patches (engine.zero_fast, on one rank its local_collectives too), from the
same init, configured as pixparse configures that many ranks. In the second, every gradient
norm is computed both ways on the same partitioned gradients (and whether ZeRO-3's fused one
read them as one flat buffer). Rank 0 writes, per stage: what install() returned, each pair of
norms (value, dtype, bit-equal, flat), whether the losses and the weights (this rank's partition
under ZeRO-3) are equal, and how many tensor collectives reached torch.distributed in each run.
The arguments after the output path name the precisions, each its own entry of the output
(`fp32`, `bf16`; none: fp32); bf16 runs ZeRO-2 once more with fp32 gradient accumulation
(data_types.grad_accum_dtype)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main(out_path: str, dtypes: list[str]) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    from pixparse.engine import zero_fast
    from pixparse.engine.dist import init_distributed
    from pixparse.engine.ds_config import single_rank_zero
    from pixparse.engine.optim import create_optimizer
    from pixparse.engine.zero_fast import local_collectives
    from pixparse.tasks.config import OptimConfig, TaskConfig
    from pixparse.tasks.registry import create_task

    # tensor collectives that reach the process group (wrapped before DeepSpeed looks them up)
    sent = []
    for name in ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor"):
        def counted_collective(*args, _fn=getattr(dist, name), **kwargs):
            sent.append(_fn.__name__)
            return _fn(*args, **kwargs)

        setattr(dist, name, counted_collective)
    init_distributed()
    world = dist.get_world_size()

    def train(stage: int, fast: bool, bf16: bool, grad_accum_fp32: bool = False):
        local_collectives(fast)
        del sent[:]
        # ds_configs/zero2_*.json's zero_optimization, at each stage
        zero = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
        ds = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2, "train_batch_size": 4 * world,
              "gradient_clipping": 1.0, "steps_per_print": 10**9, "zero_optimization": zero}
        if bf16:
            ds["bf16"] = {"enabled": True}
        if grad_accum_fp32:  # ZeRO-1/2 then keep gradients in a separate fp32 partition buffer
            ds["data_types"] = {"grad_accum_dtype": "fp32"}
        single_rank_zero(ds, world)  # as pixparse configures one rank
        torch.manual_seed(0)
        task = create_task(TaskConfig(model_name="cruller_tiny"))
        engine, *_ = deepspeed.initialize(model=task, optimizer=create_optimizer(task, OptimConfig()), config=ds)
        opt, installed, pairs = engine.optimizer, [], []
        if fast:
            installed = zero_fast.install(opt)
            fused = opt.get_grad_norm_direct

            def both(gradients, params, norm_type=2):
                mine = fused(gradients, params, norm_type)
                theirs = opt._pixparse_original_get_grad_norm_direct(gradients, params, norm_type)
                pairs.append({"fused": mine.item(), "deepspeed": theirs.item(),
                              "equal": bool(torch.equal(mine, theirs)) and mine.dtype == theirs.dtype,
                              "same_dtype": mine.dtype == theirs.dtype,
                              "flat": stage == 3 and zero_fast._contiguous_span(
                                  [g.detach() for g in gradients], opt.grad_partitions_flat_buffer) is not None})
                return mine

            opt.get_grad_norm_direct = both

        losses = []
        for micro in range(6):  # 3 optimizer steps of 2 micro-batches
            batch = task.synthetic_batch(2, torch.Generator().manual_seed(10 * micro + dist.get_rank()))
            loss = engine(batch)["loss"]
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        weights = [(p.ds_tensor if hasattr(p, "ds_tensor") else p).detach().clone() for p in task.parameters()]
        return installed, pairs, len(sent), losses, weights

    result = {}
    for dtype in dtypes:
        bf16 = dtype == "bf16"
        result[dtype] = {}
        for name in ("1", "2", "3") + (("2-fp32-accumulation",) if bf16 else ()):
            stage, acc32 = int(name[0]), name.endswith("accumulation")
            _, _, sent_ds, losses, weights = train(stage, False, bf16, acc32)
            installed, pairs, sent_fast, fast_losses, fast_weights = train(stage, True, bf16, acc32)
            same = all(torch.equal(a, b) for a, b in zip(weights, fast_weights))
            same = torch.tensor([int(same)])
            dist.all_reduce(same, op=dist.ReduceOp.MIN)  # every rank's partition
            result[dtype][name] = {"installed": installed, "norms": pairs, "collectives_sent": [sent_ds, sent_fast],
                                   "losses": [losses, fast_losses], "same_losses": losses == fast_losses,
                                   "same_weights": bool(same.item())}
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["fp32"])
