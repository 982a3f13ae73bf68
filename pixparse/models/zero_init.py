"""Build a model already partitioned over ZeRO-3 ranks (deepspeed.zero.Init), initialized as the
plain build initializes it.

Without it every rank builds the whole fp32 model before DeepSpeed partitions it: N ranks on a
node hold N full copies in host memory at once. Under zero.Init each module's parameters are
partitioned as soon as its __init__ returns, so initialization that runs later (timm's
`init_weights`, transformers' `post_init`) would write into empty shards. Both are redone here per
module, with that module's parameters gathered (one module's worth of memory at a time):
transformers models through their own ZeRO-3 path (`_from_config` with a live HfDeepSpeedConfig
gathers and re-initializes per module), timm ViTs by `init_vit_partitioned` below.

What cannot be reproduced that way is built in full as before, with the reason logged
(`unsupported_reason`): pretrained weights (`--task.pretrained`, `--task.init_from`), timm
trunks other than VisionTransformer (their init schemes differ per family) and timm's layer-wise
LR decay groups (built from parameter shapes).
"""
import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

_ACTIVE = False  # inside partitioned_build: constructors take the partitioned path


def active() -> bool:
    return _ACTIVE


def unsupported_reason(model_cfg: Any, pretrained: bool, init_from: str | None,
                       layer_decay: float | None = None) -> str | None:
    """Why this build cannot run under zero.Init (None: it can)."""
    if layer_decay:
        return "--task.opt.layer_decay groups parameters by their shape (timm), which partitions hide"
    if init_from:
        return "--task.init_from loads full weights into the model"
    if pretrained:
        return "--task.pretrained loads full weights into the model"
    from timm.models import is_model, model_entrypoint

    enc = model_cfg.image_encoder
    # ViT entrypoints build a VisionTransformer; others (Swin, ConvNeXt, ...) init differently
    if not is_model(enc.name) or model_entrypoint(enc.name).__module__ != "timm.models.vision_transformer":
        return f"image encoder {enc.name!r} is not a timm VisionTransformer"
    if enc.model_args.get("weight_init", "") != "" or enc.model_args.get("fix_init"):
        return f"image encoder model_args {enc.model_args} ask for a non-default ViT init"
    return None


@contextlib.contextmanager
def partitioned_build(ds_config: dict[str, Any]) -> Iterator[None]:
    """Models built inside are partitioned over the ranks of the process group as they are built."""
    global _ACTIVE
    # timm, transformers and dynamo must be imported before zero.Init wraps nn.Module.__init__
    import timm  # noqa: F401
    import torch._dynamo  # noqa: F401
    import transformers  # noqa: F401
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig

    # Alive only for the build: while it lives transformers treats every HF model construction as
    # collective (building one on rank 0 alone, e.g. for an export, would hang).
    hf_zero3 = HfDeepSpeedConfig(ds_config)
    libc = _glibc()
    if libc is not None:
        # Each module's full parameters are allocated, partitioned and freed in turn, interleaved
        # with the partitions that stay. glibc serves such blocks (up to 32 MiB once it has seen a
        # large free) from its heap, where the holes stay resident: cruller_large on 2 ranks peaked
        # at 3.8 GiB per rank building partitioned, more than the 3.1 GiB of a full build. Mapped
        # blocks go back to the OS when freed: map every block of 1 MiB or more while building.
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
    _ACTIVE = True
    try:
        with deepspeed.zero.Init(config_dict_or_path=ds_config):
            yield
    finally:
        _ACTIVE = False
        del hf_zero3
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's own ceiling for its dynamic threshold
            libc.malloc_trim(0)  # and hand back what the heap freed meanwhile


_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


def _glibc():
    """The C library when it is glibc (mallopt and malloc_trim), else None."""
    import ctypes
    import ctypes.util
    import platform

    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _gathered(params: list[nn.Parameter]):
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def _rank0() -> bool:
    import deepspeed

    return deepspeed.comm.get_rank() == 0


@torch.no_grad()
def init_vit_partitioned(trunk: nn.Module) -> None:
    """timm VisionTransformer.init_weights('') on a trunk built with weight_init='skip' under
    zero.Init: rank 0 initializes each module with its parameters gathered, then broadcasts."""
    from timm.layers import trunc_normal_
    from timm.models.vision_transformer import init_weights_vit_timm

    rank0 = _rank0()
    own = [p for p in (trunk.pos_embed, trunk.cls_token, trunk.reg_token) if p is not None]
    with _gathered(own):
        if rank0:
            if trunk.pos_embed is not None:
                trunc_normal_(trunk.pos_embed, std=0.02)
            for token in (trunk.cls_token, trunk.reg_token):
                if token is not None:
                    nn.init.normal_(token, std=1e-6)
    # descendants before their parents, as timm's named_apply goes
    for name, module in reversed(list(trunk.named_modules())):
        if module is trunk:
            continue
        if isinstance(module, nn.Linear) or hasattr(module, "init_weights"):
            # a module's own init_weights may touch its children's parameters too
            params = list(module.parameters(recurse=not isinstance(module, nn.Linear)))
            with _gathered(params):
                if rank0:
                    # needs_reset=False: modules that reset themselves did so in their __init__,
                    # before they were partitioned
                    init_weights_vit_timm(module, name, needs_reset=False)


@torch.no_grad()
def normal_partitioned(params: list[nn.Parameter], std: float) -> None:
    """nn.init.normal_(p, std), for parameters that may be partitioned."""
    with _gathered(params) if _ACTIVE else contextlib.nullcontext():
        if not _ACTIVE or _rank0():
            for p in params:
                nn.init.normal_(p, std=std)


def build_hf(cls: type, config: Any) -> nn.Module:
    """A transformers model from its config; partitioned, it takes transformers' ZeRO-3 path
    (per-module gathered init), else the plain constructor."""
    return cls._from_config(config) if _ACTIVE else cls(config)
