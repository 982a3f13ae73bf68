"""AdamW with the usual no-decay groups (norms, biases, embeddings, position/class tokens)."""
from typing import Any

import torch
from torch import nn

from pixparse.tasks.config import OptimConfig


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameter names that get no weight decay."""
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(module, nn.Embedding):
            names.update(prefix + n for n, _ in module.named_parameters(recurse=False))
        # timm's convention: modules list their token/position parameters here.
        if hasattr(module, "no_weight_decay") and callable(module.no_weight_decay):
            names.update(prefix + n for n in module.no_weight_decay())
    for name, p in model.named_parameters():
        if len(getattr(p, "ds_shape", p.shape)) <= 1:  # a ZeRO-3 partition is 1-D: its full shape
            names.add(name)
    return names


def offloads_optimizer(ds_config: dict[str, Any]) -> bool:
    zero = ds_config.get("zero_optimization", {})
    return zero.get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme")


def _layer_decay_groups(model: nn.Module, cfg: OptimConfig, skip: set[str]) -> tuple[list[dict], set[str]]:
    """timm's layer-wise decay groups for every timm trunk in the model (modules with a
    group_matcher), with names prefixed; returns (groups, names covered)."""
    from timm.optim import param_groups_layer_decay

    groups, covered = [], set()
    for mod_name, module in model.named_modules():
        if not hasattr(module, "group_matcher") or any(mod_name.startswith(c + ".") for c in covered):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        local_skip = {n[len(prefix):] for n in skip if n.startswith(prefix)}
        for g in param_groups_layer_decay(module, weight_decay=cfg.weight_decay,
                                          no_weight_decay_list=local_skip, layer_decay=cfg.layer_decay):
            params = [p for p in g["params"] if p.requires_grad]
            if params:
                groups.append({"params": params, "weight_decay": g["weight_decay"],
                               "lr": cfg.learning_rate * g["lr_scale"]})
        covered.add(mod_name)
        covered.update(prefix + n for n, _ in module.named_parameters())
    return groups, covered


def create_optimizer(
    model: nn.Module, cfg: OptimConfig, ds_config: dict[str, Any] | None = None
) -> torch.optim.Optimizer:
    """AdamW over decay / no-decay groups. With ZeRO optimizer offload, DeepSpeed's CPU Adam
    (the only optimizer DeepSpeed accepts there; JIT-compiled on first use)."""
    skip = no_decay_names(model)
    groups, covered = _layer_decay_groups(model, cfg, skip) if cfg.layer_decay else ([], set())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad and name not in covered:
            (no_decay if name in skip else decay).append(p)
    groups += [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.learning_rate},
        {"params": no_decay, "weight_decay": 0.0, "lr": cfg.learning_rate},
    ]
    if ds_config is not None and offloads_optimizer(ds_config):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.learning_rate, betas=cfg.betas, eps=cfg.eps, adamw_mode=True)
    # The fused kernel (CPU and CUDA): one pass over every tensor instead of a Python loop per
    # parameter, the same math.
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.betas, eps=cfg.eps, fused=True)
