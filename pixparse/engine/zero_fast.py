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

tests/helpers/zero_fast_check.py trains ZeRO-1, 2 and 3 with and without them on 1 and 2 ranks:
the same norms, losses and weights.
"""
import logging
import types
from typing import Any

import torch

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

    from pixparse.engine.dist import DEEPSPEED_TESTED

    found = deepspeed.__version__
    parts = tuple(int(p) for p in found.split(".")[:2] if p.isdigit())
    low, high = DEEPSPEED_TESTED
    if len(parts) == 2 and low <= parts < high:
        return None
    return (f"DeepSpeed {found} is not {'.'.join(map(str, low))}.x, the version pixparse's ZeRO patches "
            f"were tested on")


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
