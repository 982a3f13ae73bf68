"""The DeepSpeed internals pixparse replaces, gated: each is installed only on the DeepSpeed
versions it was written and tested against (pixparse.engine.dist.DEEPSPEED_TESTED) and only when
every attribute it replaces or reads is there; otherwise DeepSpeed's own methods stay, with one
log line saying why. `--train.patch_deepspeed false` turns them all off.

The patches (replaced on the optimizer instance; DeepSpeed's own kept as
`_pixparse_original_<name>` and called for every case a patch does not cover):

- `DeepSpeedZeroOptimizer.get_grad_norm_direct` (ZeRO-1/2) and
  `DeepSpeedZeroOptimizer_Stage3.get_grad_norm_direct` (ZeRO-3): the gradient-clipping norm.
  DeepSpeed takes it one gradient at a time in Python (a float64 copy, a norm and a device move
  each: several kernel launches per parameter on a GPU); here `torch._foreach_norm(...,
  dtype=float64)` gives the same per-tensor norms in one call, bit-equal for ZeRO-1/2 (rounded to
  float32 as DeepSpeed does). ZeRO-3's gradient partitions lie back to back in one flat buffer on
  any number of ranks, so its norm is one reduction over their span, in 1M-element chunks
  (equal to DeepSpeed's to float64 rounding). Covered: the L2 norm, no model, pipeline or expert
  parallelism, optimizer state not offloaded. Measured on 2 ranks against DeepSpeed's own
  methods (`python benchmarks/bench_train.py --world_size 2`, docs/performance.md).

- DeepSpeed's tensor collectives on a one-process world (`local_collectives`, installed by
  `engine.dist.init_distributed`): a reduction over one rank is an identity, a gather or
  reduce-scatter a copy, a broadcast or barrier nothing, yet DeepSpeed runs them through the
  process group (a ZeRO-3 build: ~230 broadcasts and ~100 all-gathers). On CPU gloo copies on its
  own threads, which start OpenMP teams of their own, and the process's OpenMP ops slow for the
  rest of the run. Any reduce op that is not an identity on one rank still goes to the backend.

tests/helpers/zero_fast_check.py trains ZeRO-1, 2 and 3 with and without them on 1 and 2 ranks:
the same norms, losses and weights.
"""
import logging
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# What each patch replaces on the optimizer (checked before anything is replaced)
ZERO12_NEEDS = ("get_grad_norm_direct", "dp_process_group", "device", "cpu_offload", "has_moe_layers")
ZERO3_NEEDS = ("get_grad_norm_direct", "grad_partitions_flat_buffer", "_get_param_partition_group",
               "_assert_same_partition_group", "_autoep_expert_parallel_group", "offload_optimizer", "device")


def _sum_of_squares(grads: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """sum_i ||g_i||^2 accumulated in `dtype`, as DeepSpeed sums it (stack, pow, sum)."""
    return torch.stack(torch._foreach_norm(grads, 2.0, dtype=dtype)).pow(2.0).sum()


# Elements per norm of a flat buffer: each chunk is cast to float64 on the way, so one norm over
# a whole buffer would materialize a float64 copy of it; in 1M-element chunks the casts stay small.
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
    parallelism: the same filtering of padding and pipeline-replicated gradients, the sum over
    the ranks, the square root and non-finite masked to -1."""
    import deepspeed.comm as ds_dist
    from deepspeed.runtime.utils import mask_nan_or_inf_with_val_inplace
    from deepspeed.runtime.zero.utils import get_norm_dtype

    if float(norm_type) != 2.0:
        return self._pixparse_original_get_grad_norm_direct(gradients, params, norm_type)
    unpadded = (g for g in gradients if not getattr(g, "_zero_padding", False))
    grads = [g.detach() for g, p in zip(unpadded, params) if not getattr(p, "ds_pipe_replicated", False)]
    if grads:
        total = _sum_of_squares(grads, get_norm_dtype()).float()
    else:
        total = torch.tensor(0.0, dtype=torch.float32).to(self.device)
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


def _replace(optimizer: Any, name: str, fn: Any) -> None:
    setattr(optimizer, f"_pixparse_original_{name}", getattr(optimizer, name))
    setattr(optimizer, name, types.MethodType(fn, optimizer))


def untested_deepspeed() -> str | None:
    """Why the installed DeepSpeed is not one the patches were tested on; None if it is."""
    import deepspeed

    from pixparse.engine.dist import DEEPSPEED_TESTED, deepspeed_tested

    found = deepspeed.__version__
    if deepspeed_tested(found):
        return None
    return (f"DeepSpeed {found} is not {'.'.join(map(str, DEEPSPEED_TESTED[0]))}.x, the version pixparse's "
            f"ZeRO patches were tested on")


def install(optimizer: Any) -> list[str]:
    """Give a DeepSpeed ZeRO optimizer the patches that apply to it, after checking the DeepSpeed
    version and every attribute they use; returns what was installed (empty: DeepSpeed's own
    methods kept, logged where a version or attribute check was what stopped it)."""
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    stage3 = isinstance(optimizer, DeepSpeedZeroOptimizer_Stage3)
    if not (stage3 or isinstance(optimizer, DeepSpeedZeroOptimizer)):
        return []
    why = untested_deepspeed()
    missing = [n for n in (ZERO3_NEEDS if stage3 else ZERO12_NEEDS) if not hasattr(optimizer, n)]
    if why or missing:
        logger.warning("%s: DeepSpeed's own ZeRO methods kept (--train.patch_deepspeed)",
                       why or f"{type(optimizer).__name__} has no {', '.join(missing)}")
        return []
    if getattr(optimizer, "model_parallel_group", None) is not None:
        return []
    if stage3:
        if optimizer.offload_optimizer:
            return []
        _replace(optimizer, "get_grad_norm_direct", _zero3_grad_norm)
        return ["ZeRO-3 gradient norm fused over the flat partitions (torch._foreach_norm)"]
    if optimizer.cpu_offload or optimizer.has_moe_layers:
        return []
    _replace(optimizer, "get_grad_norm_direct", _zero12_grad_norm)
    return ["ZeRO-1/2 gradient norm fused (torch._foreach_norm)"]


# ----------------------------------------------------------------- one-process collectives
class _Done:
    """The handle of an `async_op` collective done locally: already complete."""

    def wait(self, timeout: Any = None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


_REDUCE_OPS = ("SUM", "AVG", "MIN", "MAX", "PRODUCT", "BAND", "BOR", "BXOR")  # identities on one rank


def _identity_op(op: Any) -> bool:
    from deepspeed.comm.reduce_op import ReduceOp

    if isinstance(op, ReduceOp):
        return op.name in _REDUCE_OPS
    return any(op == getattr(dist.ReduceOp, name) for name in _REDUCE_OPS)


def _done(async_op: bool) -> _Done | None:
    return _Done() if async_op else None


def _copy(out: torch.Tensor, src: torch.Tensor) -> None:
    if out.data_ptr() != src.data_ptr():  # the same address: one rank's chunk is the whole output
        out.copy_(src.reshape(out.shape))


def _local_methods(backend: Any) -> dict[str, Callable[..., Any]]:
    """DeepSpeed's tensor collectives as they are on a one-process world: a reduction over one
    rank leaves the tensor as it is, a gather or reduce-scatter copies it, a broadcast or barrier
    does nothing. Any other reduce op (e.g. a pre-multiplied sum) goes to the backend."""
    cls = type(backend)

    def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        if not _identity_op(op):
            return cls.all_reduce(backend, tensor, op, group, async_op)
        return _done(async_op)

    def all_reduce_coalesced(tensors, op=dist.ReduceOp.SUM, group=None, async_op=False):
        if not _identity_op(op):
            return cls.all_reduce_coalesced(backend, tensors, op, group, async_op)
        return _done(async_op)

    def inference_all_reduce(tensor, op, group=None):
        return tensor

    def reduce(tensor, dst, op=dist.ReduceOp.SUM, group=None, async_op=False):
        if not _identity_op(op):
            return cls.reduce(backend, tensor, dst, op, group, async_op)
        return _done(async_op)

    def broadcast(tensor, src, group=None, async_op=False):
        return _done(async_op)

    def all_gather(tensor_list, tensor, group=None, async_op=False):
        _copy(tensor_list[0], tensor)
        return _done(async_op)

    def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op=False):
        _copy(output_tensor, input_tensor)
        return _done(async_op)

    def all_gather_coalesced(output_tensors, input_tensors, group=None, async_op=False):
        for out, src in zip(output_tensors, input_tensors):
            _copy(out, src)
        return _done(async_op)

    def reduce_scatter_tensor(output_tensor, input_tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        if not _identity_op(op):
            return cls.reduce_scatter_tensor(backend, output_tensor, input_tensor, op, group, async_op)
        _copy(output_tensor, input_tensor)
        return _done(async_op)

    def barrier(group=None, async_op=False, device_ids=None):
        return _done(async_op)

    return {fn.__name__: fn for fn in (all_reduce, all_reduce_coalesced, inference_all_reduce, reduce, broadcast,
                                       all_gather, all_gather_into_tensor, all_gather_coalesced,
                                       reduce_scatter_tensor, barrier)} | {"all_gather_base": all_gather_into_tensor}


def collectives_are_local() -> bool:
    """Whether DeepSpeed's tensor collectives are local now (see `local_collectives`)."""
    import deepspeed.comm.comm as ds_comm

    return ds_comm.cdb is not None and "all_reduce" in vars(ds_comm.cdb)


def local_collectives(enable: bool) -> bool:
    """On a one-process world, make DeepSpeed's tensor collectives local (`enable`), or give it
    back its own (not `enable`); returns whether they are local now.

    On one rank every collective is an identity or a copy, yet DeepSpeed still runs them through
    the process group: a ZeRO-3 build does ~230 broadcasts and ~100 all-gathers of parameters. On
    CPU, gloo does those copies with ATen on its own threads, which start OpenMP teams of their
    own; with more OpenMP threads than cores libgomp stops spinning at barriers, and every
    multi-threaded op of the process slows for the rest of the run. Done here, the copies run on
    the caller's thread."""
    import deepspeed.comm.comm as ds_comm

    why = untested_deepspeed() if enable else None
    if why:
        logger.warning("%s: DeepSpeed's own collectives kept (--train.patch_deepspeed)", why)
        return False
    backend = ds_comm.cdb
    if backend is None or dist.get_world_size() != 1:
        return False
    for name, fn in _local_methods(backend).items():
        if enable:
            setattr(backend, name, fn)
        else:
            backend.__dict__.pop(name, None)
    return enable
