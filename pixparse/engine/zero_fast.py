"""Per-parameter work DeepSpeed's ZeRO optimizers do that pixparse's runs do not need.

Fused gradient norm (ZeRO-1/2/3). DeepSpeed computes the clipping norm one gradient at a time
in Python: a float64 copy of it, a norm, a device move, then a stack: on a GPU several kernel
launches per parameter. `torch._foreach_norm(..., dtype=float64)` gives the same per-tensor
norms (float64 accumulation, bit-equal) in one call. On CPU it costs the same (it casts each
tensor too: 16.5 vs 17.6 ms for 40M gradient elements; cruller_tiny 1.2-1.3 -> 1.1-1.2 ms a
step); the launches it saves on a GPU are not measured yet (benchmarks/gpu_bench.sh).

No reduction on one rank (ZeRO-1/2). With one data-parallel rank DeepSpeed still flattens every
gradient into a new buffer, divides it by 1, all-reduces it over a one-rank group and copies it
back tensor by tensor (cruller_tiny: ~1.2 ms of a 30 ms step; cruller_base: two 650 MB copies).
On one rank that is the identity, so `allreduce_and_copy` only adds each gradient into its
partition buffer where DeepSpeed asks for one.

No reduce-scatter on one rank (ZeRO-3). Likewise ZeRO-3 concatenates each bucket of gradients
into a new buffer, divides it by 1 and reduce-scatters it over the one rank before copying the
partitions out; on one rank the partitions are the gradients, so `__avg_scatter_grads` returns
views of them (cruller_base, batch 2: ZeRO-3 step 1.13-1.18x -> 1.03-1.08x the plain loop's, paired).

No per-gradient hooks on one rank (ZeRO-2; ZeRO-3 with resident parameters). DeepSpeed runs a
Python hook as each gradient is accumulated (hook-count bookkeeping, a bucket entry: ~15 us a
parameter). On one rank there is nothing to overlap with, so the hooks are removed and the
engine's after-backward epilogue reduces every gradient at once, as DeepSpeed's own coalesced
flush does (cruller_tiny: 88 hooks, ~1.2 ms of a 26 ms step). ZeRO-1/2 skip the bucket altogether
unless a group keeps its gradients in a separate fp32 buffer; the parameters are no longer
re-pointed at the flat buffer after every step unless the buffer moved.

Resident parameters on one rank (ZeRO-3). single_rank_zero makes every parameter persistent; a
gathered parameter's data is then its partition's memory, so DeepSpeed's module hooks (fetch and
release around each module's forward and backward, ~190 modules in cruller_tiny) and the step's
release and re-gather of every parameter have nothing to do and are skipped (tiny ZeRO-3 ~2x ->
1.15-1.2x the plain loop, paired). Without those hooks' autograd Functions in the graph, autograd
sums some gradients in another order: equal to DeepSpeed's to rounding, not bit for bit. Given the
engine, its forward no longer marks every module for fetch-on-access of parameters (none needs
fetching), and the gradients go to their partition buffer in one foreach copy (or add) after
backward instead of one bucket entry each.

Norms over flat gradients (one rank; ZeRO-3 on any number). Per gradient, the float64 norm is a
cast and a reduction per tensor (~15 us each on CPU); ZeRO-1/2 on one rank flatten each group's
gradients before the step (the copy DeepSpeed's step makes anyway, which it then takes as the
group's flat partition) and take one norm over that; ZeRO-3's partitions already lie back to back
in one buffer, whose span gives the norm. ZeRO-1/2's norm is rounded to float32 and stays bit-equal
to DeepSpeed's; ZeRO-3's stays float64 and is equal to float64 rounding (1e-16).

`install(optimizer)` replaces these methods on the optimizer instance, for the set-ups pixparse
runs (L2 norm; no tensor, pipeline, sequence or expert parallelism; optimizer state not
offloaded; the one-rank ZeRO-1/2 path also without overlap_comm); any other call goes to
DeepSpeed's own method. The hook-free paths assume the engine's backward (engine.backward),
which pixparse's Trainer always uses. tests/helpers/zero_fast_check.py trains each stage with and
without them on 1 and 2 ranks: the same norms (bit-equal, dtype included), losses and weights.
"""
import contextlib
import types
from typing import Any

import torch


def _sum_of_squares(grads: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """sum_i ||g_i||^2 accumulated in `dtype`, as DeepSpeed sums it (stack, pow, sum)."""
    return torch.stack(torch._foreach_norm(grads, 2.0, dtype=dtype)).pow(2.0).sum()


# Elements per norm of a flat buffer: each is cast to float64 on the way, so one norm over a
# whole 40M-element buffer materializes a 320 MB copy (201 ms here, against 48 ms for 88
# separate tensors); in 1M-element chunks the casts stay a few MB (66-79 ms).
_NORM_CHUNK = 1 << 20


def _flat_sum_of_squares(flat: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """||flat||^2 accumulated in `dtype`, over chunks of the flat buffer."""
    return _sum_of_squares(list(flat.split(_NORM_CHUNK)), dtype)


def _contiguous_span(grads: list[torch.Tensor], flat: torch.Tensor | None) -> torch.Tensor | None:
    """The one view of `flat` that `grads` (1-D views of it) tile back to back, in order;
    None if they do not (then the norm is taken tensor by tensor)."""
    if flat is None or not grads or flat.dim() != 1:
        return None
    size, base = flat.element_size(), flat.data_ptr()
    start = grads[0].data_ptr()
    offset, rest = divmod(start - base, size)
    end = start
    for g in grads:
        if (g.data_ptr() != end or g.dim() != 1 or g.dtype != flat.dtype or g.device != flat.device
                or g.untyped_storage().data_ptr() != flat.untyped_storage().data_ptr()):
            return None
        end += g.numel() * size
    total = (end - start) // size
    if rest or offset < 0 or offset + total > flat.numel():
        return None
    return flat.narrow(0, offset, total)


def _zero12_grad_norm(self, gradients, params, norm_type=2):
    """DeepSpeedZeroOptimizer.get_grad_norm_direct (ZeRO-1/2) for norm_type 2 without model
    parallelism: the same filtering of padding and pipeline-replicated gradients."""
    from deepspeed.runtime.zero.utils import get_norm_dtype

    if float(norm_type) != 2.0:
        return self._pixparse_original_get_grad_norm_direct(gradients, params, norm_type)
    if isinstance(gradients, _FlatGradients) and not any(getattr(p, "ds_pipe_replicated", False) for p in params):
        # one rank: the group's gradients already in one flat buffer (zeros where padded)
        total = _flat_sum_of_squares(gradients.flat_partition, get_norm_dtype()).float()
        return _finish_zero12_norm(self, total)
    unpadded = (g for g in gradients if not getattr(g, "_zero_padding", False))
    grads = [g.detach() for g, p in zip(unpadded, params) if not getattr(p, "ds_pipe_replicated", False)]
    if grads:
        total = _sum_of_squares(grads, get_norm_dtype()).float()
    else:
        total = torch.tensor(0.0, dtype=torch.float32).to(self.device)
    return _finish_zero12_norm(self, total)


def _finish_zero12_norm(self, total: torch.Tensor) -> torch.Tensor:
    """The rest of get_grad_norm_direct after this rank's sum of squares: summed over the ranks,
    square root, non-finite masked to -1."""
    import deepspeed.comm as ds_dist
    from deepspeed.runtime.utils import mask_nan_or_inf_with_val_inplace

    ds_dist.all_reduce(total, op=ds_dist.ReduceOp.SUM, group=self.dp_process_group)
    total = total.pow(0.5)
    mask_nan_or_inf_with_val_inplace(total, device=self.device)
    return total


def _zero3_grad_norm(self, gradients, params, norm_type=2):
    """DeepSpeedZeroOptimizer_Stage3.get_grad_norm_direct for norm_type 2 without model or
    expert parallelism, gradients on the optimizer's device (no offload)."""
    import deepspeed.comm as ds_dist
    from deepspeed.runtime.zero.utils import get_norm_dtype

    if (float(norm_type) != 2.0 or not gradients or self._autoep_expert_parallel_group(params) is not None
            or any(g.device != gradients[0].device for g in gradients)):
        return self._pixparse_original_get_grad_norm_direct(gradients, params, norm_type)
    self._assert_same_partition_group(params)
    process_group = self._get_param_partition_group(params[0])
    grads = [g.detach() for g, _ in zip(gradients, params)]
    span = _contiguous_span(grads, self.grad_partitions_flat_buffer)
    if span is not None:  # the group's partitions lie back to back in DeepSpeed's flat buffer
        total = _flat_sum_of_squares(span, get_norm_dtype())
    else:
        total = _sum_of_squares(grads, get_norm_dtype())
    ds_dist.all_reduce(total, op=ds_dist.ReduceOp.SUM, group=process_group)
    total = total ** 0.5
    err = torch.tensor(-1.0, device=self.device, dtype=torch.float)
    return torch.where(total.isinf().logical_or(total.isnan()), err, total)


def _one_rank_allreduce_and_copy(self, small_bucket, communication_data_type, rank=None, log=None, divide=True,
                                 process_group=None, output_bucket=None):
    """DeepSpeedZeroOptimizer.allreduce_and_copy on a one-rank group: the gradients are already
    the average; only the partition buffers (if given) receive them."""
    for buf, output in zip(small_bucket, output_bucket or [None] * len(small_bucket)):
        self._add_to_grad_partition_buffer(output, buf)


def _one_rank_zero3_scatter(self, params_to_reduce, communication_data_type):
    """DeepSpeedZeroOptimizer_Stage3.__avg_scatter_grads on a one-rank partition group. DeepSpeed
    concatenates the bucket's gradients into a new buffer, divides it by 1 and reduce-scatters it
    over the one rank; the partitions it returns are the gradients unchanged, so this returns
    views of them (the pre- and post-scaling and dtype casts as DeepSpeed does them)."""
    import deepspeed.comm as ds_dist

    group = self._get_param_partition_group(params_to_reduce[0])
    if (ds_dist.get_world_size(group=group) != 1 or self.all2all_process_group is not None
            or self._autoep_expert_parallel_group(params_to_reduce) is not None):
        return self._pixparse_original_avg_scatter_grads(params_to_reduce, communication_data_type)
    self._assert_same_partition_group(params_to_reduce)
    grads = [p.grad for p in params_to_reduce]
    if communication_data_type != self.dtype:
        grads = [g.to(communication_data_type) for g in grads]
    if self.postscale_gradients and self.gradient_predivide_factor != 1.0:
        grads = [g.div(self.gradient_predivide_factor) for g in grads]
    parts = [g.reshape(-1) for g in grads]
    if self.postscale_gradients and self.gradient_predivide_factor != 1.0:
        parts = [g.mul(self.gradient_predivide_factor) for g in parts]
    if communication_data_type != self.gradient_accumulation_dtype:
        parts = [g.to(self.gradient_accumulation_dtype) for g in parts]
    return parts


def _one_rank_reduce_epilogue(self):
    """DeepSpeedZeroOptimizer.overlapping_partition_gradients_reduce_epilogue on one rank without
    gradient hooks (ZeRO-2; the engine calls it after every backward). DeepSpeed's hooks put each
    gradient into a bucket as autograd produces it (~15 us of Python per parameter); on one rank
    the bucket's reduction changes nothing unless a group keeps its gradients in a separate fp32
    partition buffer (bf16 with fp32 accumulation). So only those groups' gradients go through
    DeepSpeed's bucket (in parameter order, as its coalesced flush does it), then its epilogue runs
    as it would after the last hook."""
    compact = [i for i in range(len(self.bit16_groups)) if self._use_compact_grad_partition_buffer(i)]
    if compact:
        self.setup_buckets()
        for i in compact:
            for param in self.bit16_groups[i]:
                if param.requires_grad and self.get_gradient_for_reduction(param) is not None:
                    self.reduce_ready_partitions_and_remove_grads(param, i)
    self._pixparse_original_overlapping_partition_gradients_reduce_epilogue()
    _flatten_at_boundary(self)


class _FlatGradients(list):
    """A group's averaged_gradients (DeepSpeed's list of gradient tensors) with `flat_partition`:
    the same gradients in one flat buffer, as DeepSpeed's step would flatten them. DeepSpeed's
    step takes a `flat_partition` it finds there instead of flattening again."""

    flat_partition: torch.Tensor


def _flatten_at_boundary(self) -> None:
    """On one rank, at the accumulation boundary: flatten each group's gradients (the copy
    DeepSpeed's step makes anyway) before the step, so the clipping norm is one reduction over
    the flat buffer instead of one per gradient (cruller_tiny: 88 tensors, each cast to float64)."""
    if not self.is_gradient_accumulation_boundary():
        return
    for i in range(len(self.bit16_groups)):
        grads = self.averaged_gradients.get(i)
        if grads is None or getattr(grads, "flat_partition", None) is not None:
            continue  # no gradients, or DeepSpeed's own flat (compact) partition
        flat = _FlatGradients(grads)
        flat.flat_partition = self.flatten_dense_tensors_aligned(grads, int(self.partition_size[i]))
        self.averaged_gradients[i] = flat


def _one_rank_reduce_gradients(self, pipeline_parallel=False):
    """DeepSpeedZeroOptimizer.reduce_gradients (ZeRO-1 at the accumulation boundary) on one rank:
    the same as _one_rank_reduce_epilogue."""
    if pipeline_parallel:
        return self._pixparse_original_reduce_gradients(pipeline_parallel)
    _one_rank_reduce_epilogue(self)


def _one_rank_update_model_weights(self, group_index):
    """DeepSpeedZeroOptimizer._update_model_bit16_weights on one rank: after every step DeepSpeed
    points each parameter's data at its slice of the group's flat buffer again (two Python
    assignments per parameter; its comment: 'we probably don't need this? just to be safe'). On
    one rank the all-gather leaves the flat buffer where it was, so this re-points them only when
    the buffer is not the one they were last pointed at."""
    flat = self.bit16_groups_flat[group_index]
    key = (id(flat), flat.data_ptr(), flat.numel())
    if self._pixparse_views.get(group_index) != key:
        self._pixparse_original_update_model_bit16_weights(group_index)
        self._pixparse_views[group_index] = key


def _resident_partition_all_parameters(self):
    """DeepSpeedZeroOptimizer_Stage3._partition_all_parameters for one rank with every parameter
    resident: inside step() DeepSpeed releases every parameter, updates the partitions, then
    gathers the persistent ones again (Python per parameter, every step). On one rank a gathered
    parameter's data is its partition (the same memory, updated in place by the step), so inside
    step() there is nothing to release or gather; elsewhere (checkpoint save/load) DeepSpeed's own
    runs, and its checkpoint epilogue gathers them all again (all persistent)."""
    if not self._pixparse_in_step:
        self._pixparse_original_partition_all_parameters()


def _resident_step(self, closure=None):
    """DeepSpeedZeroOptimizer_Stage3.step, flagged so _resident_partition_all_parameters knows."""
    self._pixparse_in_step = True
    try:
        return self._pixparse_original_step(closure)
    finally:
        self._pixparse_in_step = False


def _one_rank_zero3_epilogue(self):
    """DeepSpeedZeroOptimizer_Stage3.overlapping_partition_gradients_reduce_epilogue on one rank
    without gradient hooks (the engine calls it after every backward): every gradient goes to its
    partition after backward, as DeepSpeed's own coalesced flush does it
    (DeepSpeedEngine._flush_coalesced_reduction_zero3), instead of one Python hook per gradient
    with its hook-count bookkeeping during backward. DeepSpeed would then put each gradient in a
    bucket and copy (first micro-batch) or add it into its partition buffer one by one (~45 us of
    Python per gradient); here that is one foreach copy or add per communication dtype, with
    _one_rank_zero3_scatter's scaling and casts."""
    params = [p for group in self.fp16_groups for p in group if p.requires_grad and p.grad is not None]
    by_dtype: dict[torch.dtype, list] = {}
    for param in params:
        by_dtype.setdefault(self.get_param_comm_dtype(param), []).append(param)
    buffers_of = getattr(self, ZERO3_GRAD_PARTITIONS)
    for comm_dtype, group in by_dtype.items():
        parts = getattr(self, ZERO3_SCATTER)(group, comm_dtype)  # _one_rank_zero3_scatter
        buffers = [buffers_of[p.ds_id].narrow(0, 0, part.numel()) for p, part in zip(group, parts)]
        if self.micro_step_id == 0:  # DeepSpeed's partition_grads: the first micro-batch copies
            torch._foreach_copy_(buffers, parts)
        else:  # later ones add, in the accumulation dtype
            torch._foreach_add_(buffers, [part.to(self.gradient_accumulation_dtype).view(buf.shape)
                                          for buf, part in zip(buffers, parts)])
        for param in group:
            param.grad = None
    self._pixparse_original_overlapping_partition_gradients_reduce_epilogue()


def _one_rank_resident(optimizer: Any) -> str | None:
    """On one rank with every parameter persistent (single_rank_zero sets the threshold) and
    nothing offloaded: check that each gathered parameter's data is its partition's memory;
    then remove DeepSpeed's module hooks (fetch/release around every module's forward and
    backward: ~190 modules x 4 hooks plus an autograd Function per module output in cruller_tiny),
    which have nothing to fetch or release, and (without leaf modules) the per-gradient hooks.
    Returns what was done; None (nothing changed): not this set-up."""
    offload = optimizer.parameter_offload
    params = list(offload.module.parameters())
    if (optimizer.offload_param or optimizer.offload_optimizer or offload.zero_quantized_weights or not params
            or not all(getattr(p, "ds_persist", False) for p in params)):
        return None
    params[0].all_gather(params)  # DeepSpeed's own gather; a no-op for those already gathered
    for p in params:
        if (p.data.device != p.ds_tensor.device or p.data.numel() != p.ds_tensor.numel()
                or p.data.data_ptr() != p.ds_tensor.data_ptr()):
            return None
    offload._remove_module_hooks()
    done = "one rank: parameters resident (no module fetch/release hooks)"
    if (not optimizer.leaf_parameters  # leaf modules reduce their parameters' gradients from a module hook
            and not (optimizer.zenflow or optimizer.use_muon or optimizer.autoep_folding_tp_group is not None)
            and hasattr(optimizer, ZERO3_GRAD_PARTITIONS)):
        _remove_grad_hooks(optimizer)
        _replace(optimizer, "overlapping_partition_gradients_reduce_epilogue", _one_rank_zero3_epilogue)
        done = "one rank: parameters resident (no module fetch/release hooks), no per-gradient hooks"
    optimizer._pixparse_in_step = False
    _replace(optimizer, "_partition_all_parameters", _resident_partition_all_parameters,
             short="partition_all_parameters")
    _replace(optimizer, "step", _resident_step)
    return done


@contextlib.contextmanager
def _weights_unpartitioned(engine: Any):
    """For its duration the engine answers that no weights are partitioned (an instance attribute
    over DeepSpeedEngine.zero_optimization_partition_weights)."""
    engine.zero_optimization_partition_weights = lambda: False
    try:
        yield
    finally:
        del engine.zero_optimization_partition_weights


def _resident_forward_prologue(self, inputs, kwargs):
    """DeepSpeedEngine._forward_prologue with resident parameters: DeepSpeed's own, told the
    weights are not partitioned for its duration, so it skips marking every module's parameter
    dict as in-forward (~190 modules in cruller_tiny; the marks let a parameter used outside
    its module be fetched on access, and with every parameter resident none needs fetching)."""
    with _weights_unpartitioned(self):
        return self._pixparse_original_forward_prologue(inputs, kwargs)


def _resident_forward_epilogue(self):
    """DeepSpeedEngine._forward_epilogue, likewise without unmarking every module."""
    with _weights_unpartitioned(self):
        return self._pixparse_original_forward_epilogue()


def _resident_forward(engine: Any) -> str:
    """With every parameter resident on one rank: the modules' parameter dicts back to plain
    dicts (DeepSpeed's ZeROOrderedDict checks each parameter access in forward for one to fetch:
    ~90 accesses a cruller_tiny forward) and the engine's forward prologue and epilogue without
    their walk over every module (together ~2 ms of a 60 ms tiny step here)."""
    from deepspeed.runtime.zero.parameter_offload import ZeROOrderedDict

    for module in engine.module.modules():
        if isinstance(module._parameters, ZeROOrderedDict):
            module._parameters = dict(module._parameters.items())
    _replace(engine, "_forward_prologue", _resident_forward_prologue, short="forward_prologue")
    _replace(engine, "_forward_epilogue", _resident_forward_epilogue, short="forward_epilogue")
    return "one rank: no parameter fetch-on-access in forward"


def _remove_grad_hooks(optimizer: Any) -> None:
    """Remove the per-gradient hooks DeepSpeed's ZeRO optimizers register (stage 1/2 and 3 keep
    their handles in _grad_acc_hooks)."""
    for handle in optimizer._grad_acc_hooks:
        handle.remove()
    optimizer._grad_acc_hooks = []


# DeepSpeedZeroOptimizer_Stage3.__avg_scatter_grads and __param_id_to_grad_partition (the
# parameters' gradient partitions, views of one flat buffer) as the instance sees them
ZERO3_SCATTER = "_DeepSpeedZeroOptimizer_Stage3__avg_scatter_grads"
ZERO3_GRAD_PARTITIONS = "_DeepSpeedZeroOptimizer_Stage3__param_id_to_grad_partition"


def _replace(optimizer: Any, name: str, fn: Any, short: str | None = None) -> None:
    setattr(optimizer, f"_pixparse_original_{short or name}", getattr(optimizer, name))
    setattr(optimizer, name, types.MethodType(fn, optimizer))


def install(optimizer: Any, engine: Any = None) -> list[str]:
    """Give a DeepSpeed ZeRO optimizer the faster methods that apply to it (and `engine`, its
    engine, a forward without parameter discovery where ZeRO-3 keeps every parameter resident);
    returns what was installed (empty: this optimizer or set-up keeps DeepSpeed's own)."""
    import deepspeed.comm as ds_dist
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if getattr(optimizer, "model_parallel_group", None) is not None:
        return []
    if isinstance(optimizer, DeepSpeedZeroOptimizer_Stage3):
        if optimizer.offload_optimizer:
            return []
        _replace(optimizer, "get_grad_norm_direct", _zero3_grad_norm)
        done = ["ZeRO-3 gradient norm fused (torch._foreach_norm)"]
        if ds_dist.get_world_size(group=optimizer.dp_process_group) == 1:
            _replace(optimizer, ZERO3_SCATTER, _one_rank_zero3_scatter, short="avg_scatter_grads")
            done.append("one rank: no gradient reduce-scatter")
            resident = _one_rank_resident(optimizer)
            if resident:
                done.append(resident)
                if engine is not None:
                    done.append(_resident_forward(engine))
        return done
    if not isinstance(optimizer, DeepSpeedZeroOptimizer) or optimizer.cpu_offload or optimizer.has_moe_layers:
        return []
    _replace(optimizer, "get_grad_norm_direct", _zero12_grad_norm)
    done = ["ZeRO-1/2 gradient norm fused (torch._foreach_norm)"]
    if (ds_dist.get_world_size(group=optimizer.dp_process_group) == 1 and not optimizer.overlap_comm
            and optimizer.sequence_parallel_size == 1):
        _replace(optimizer, "allreduce_and_copy", _one_rank_allreduce_and_copy)
        done.append("one rank: no gradient all-reduce")
        if not (optimizer.contiguous_gradients or optimizer.use_grad_accum_attribute or optimizer.zenflow):
            _remove_grad_hooks(optimizer)
            _replace(optimizer, "overlapping_partition_gradients_reduce_epilogue", _one_rank_reduce_epilogue)
            _replace(optimizer, "reduce_gradients", _one_rank_reduce_gradients)
            optimizer._pixparse_views = {}
            _replace(optimizer, "_update_model_bit16_weights", _one_rank_update_model_weights,
                     short="update_model_bit16_weights")
            done.append("one rank: no per-gradient hooks, no bucket, parameters not re-pointed every step")
    return done
