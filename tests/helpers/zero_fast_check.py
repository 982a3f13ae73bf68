"""Run on 1 or 2 ranks: for ZeRO stages 1, 2 and 3, cruller_tiny trained 3 steps of 2
accumulated micro-batches (each rank its own) by DeepSpeed as it is and by DeepSpeed with
pixparse's zero_fast methods, from the same init, configured as pixparse configures that many
ranks. In the second, every gradient norm is computed both ways on the same partitioned
gradients (and whether the fused one read them as one flat buffer). Rank 0 writes, per stage:
what install() returned, each pair of norms (value, dtype, bit-equal, flat), which gradient
reduction ran (ZeRO-1/2: allreduce_and_copy, and "bucket" per
gradient put in DeepSpeed's reduction bucket; ZeRO-3: __avg_scatter_grads), whether the losses
and the weights (this rank's partition under ZeRO-3) are equal (and, on the fp32 master
partitions, their largest difference and the largest change training made), how many tensor
collectives reached torch.distributed in each run (on one rank the second run makes DeepSpeed's
collectives local: pixparse.engine.dist.local_collectives) and how many per-gradient hooks each
kept.
A second argument `bf16` runs it in bf16 (`fp32` or none: fp32), and ZeRO-2 once more with fp32
gradient accumulation (data_types.grad_accum_dtype: the gradients kept in an fp32 partition
buffer, which on one rank still go through DeepSpeed's bucket)."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main(out_path: str, bf16: bool = False) -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    from pixparse.engine import zero_fast
    from pixparse.engine.dist import init_distributed, local_collectives
    from pixparse.engine.ds_config import single_rank_zero
    from pixparse.engine.optim import create_optimizer
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

    def train(stage: int, fast: bool, grad_accum_fp32: bool = False):
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
        opt, installed, pairs, calls = engine.optimizer, [], [], []
        if fast:
            installed = zero_fast.install(opt, engine)
            fused = opt.get_grad_norm_direct

            def both(gradients, params, norm_type=2):
                mine = fused(gradients, params, norm_type)
                theirs = opt._pixparse_original_get_grad_norm_direct(gradients, params, norm_type)
                pairs.append({"fused": mine.item(), "deepspeed": theirs.item(),
                              "equal": bool(torch.equal(mine, theirs)) and mine.dtype == theirs.dtype,
                              "same_dtype": mine.dtype == theirs.dtype,
                              "flat": isinstance(gradients, zero_fast._FlatGradients) or (
                                  stage == 3 and zero_fast._contiguous_span(
                                      [g.detach() for g in gradients], opt.grad_partitions_flat_buffer) is not None)})
                return mine

            opt.get_grad_norm_direct = both
            # the gradient reduction zero_fast may replace on one rank
            name = zero_fast.ZERO3_SCATTER if stage == 3 else "allreduce_and_copy"
            reduce = getattr(opt, name)

            def counted(*args, **kwargs):
                calls.append(reduce.__func__.__name__)
                return reduce(*args, **kwargs)

            setattr(opt, name, counted)
        if stage < 3:  # gradients put into DeepSpeed's reduction bucket (by its hooks or a flush)
            bucket = opt.reduce_independent_p_g_buckets_and_remove_grads

            def bucketed(*args, **kwargs):
                calls.append("bucket")
                return bucket(*args, **kwargs)

            opt.reduce_independent_p_g_buckets_and_remove_grads = bucketed

        def masters():  # the optimizer's fp32 partitions
            flat = opt.fp32_partitioned_groups_flat if stage == 3 else opt.single_partition_of_fp32_groups
            return [t.detach().clone() for t in flat]

        start = masters()
        losses = []
        for micro in range(6):  # 3 optimizer steps of 2 micro-batches
            batch = task.synthetic_batch(2, torch.Generator().manual_seed(10 * micro + dist.get_rank()))
            loss = engine(batch)["loss"]
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        weights = [(p.ds_tensor if hasattr(p, "ds_tensor") else p).detach().clone() for p in task.parameters()]
        hooks = len(getattr(opt, "_grad_acc_hooks", []))  # per-gradient hooks left registered
        end = masters()
        moved = max((a - b).abs().max().item() for a, b in zip(start, end))
        return installed, pairs, calls, len(sent), losses, weights, hooks, moved, end

    result = {}
    for name in ("1", "2", "3") + (("2-fp32-accumulation",) if bf16 else ()):
        stage, acc32 = int(name[0]), name.endswith("accumulation")
        *_, sent_ds, losses, weights, hooks_ds, _, masters_ds = train(stage, fast=False, grad_accum_fp32=acc32)
        (installed, pairs, calls, sent_fast, fast_losses, fast_weights, hooks_fast, moved,
         masters_fast) = train(stage, True, acc32)
        same = all(torch.equal(a, b) for a, b in zip(weights, fast_weights))
        same = torch.tensor([int(same)])
        dist.all_reduce(same, op=dist.ReduceOp.MIN)  # every rank's partition
        diff = torch.tensor([max((a - b).abs().max().item() for a, b in zip(masters_ds, masters_fast))])
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        result[name] = {"installed": installed, "norms": pairs, "reduce_calls": calls,
                        "collectives_sent": [sent_ds, sent_fast], "grad_hooks": [hooks_ds, hooks_fast],
                        "losses": [losses, fast_losses], "same_losses": losses == fast_losses,
                        "same_weights": bool(same.item()), "max_master_diff": diff.item(),
                        "max_master_update": moved}
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], bf16=sys.argv[2:] == ["bf16"])
