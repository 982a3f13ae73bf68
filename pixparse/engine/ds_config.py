"""Read a DeepSpeed JSON, fill its "auto" values from the pixparse config, reject conflicts."""
import json
import os
from typing import Any

# Keys pixparse owns; the JSON must not set them (they would silently fight --task.opt.*).
_OWNED_BY_PIXPARSE = {
    "optimizer": "the optimizer is built from --task.opt.* (lr, betas, weight_decay)",
    "scheduler": "the LR schedule is built from --task.opt.schedule and --task.num_warmup_intervals",
}


def _fill(ds: dict[str, Any], key: str, value: Any, flag: str, path: str) -> None:
    current = ds.get(key, "auto")
    if current == "auto":
        ds[key] = value
    elif current != value:
        raise ValueError(
            f"{flag}={value} disagrees with {key}={current} in {path}; set one of them "
            f"(\"auto\" in the JSON takes the flag's value)"
        )


def load_ds_config(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ValueError(f"--deepspeed_config: file {path!r} does not exist (see ds_configs/)")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"--deepspeed_config: {path} is not valid JSON: {e}") from e


def resolve_ds_config(
    path: str,
    micro_batch_size: int,
    grad_accum_steps: int,
    world_size: int,
    clip_grad_value: float | None,
) -> dict[str, Any]:
    """The final DeepSpeed dict for this run; every "auto" is filled, every conflict raised."""
    ds = load_ds_config(path)
    for key, why in _OWNED_BY_PIXPARSE.items():
        if key in ds:
            raise ValueError(f"{path} sets {key!r}, but {why}; remove {key!r} from the JSON")
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"{path}: zero_optimization.stage must be 0-3, got {stage!r}")
    if ds.get("bf16", {}).get("enabled") is True and ds.get("fp16", {}).get("enabled") is True:
        raise ValueError(f"{path}: bf16 and fp16 are both enabled; enable one")
    _fill(ds, "train_micro_batch_size_per_gpu", micro_batch_size, "--data.train.batch_size", path)
    _fill(ds, "gradient_accumulation_steps", grad_accum_steps, "--task.opt.grad_accum_steps", path)
    _fill(ds, "train_batch_size", micro_batch_size * grad_accum_steps * world_size,
          f"--data.train.batch_size x --task.opt.grad_accum_steps x {world_size} rank(s)", path)
    clip = ds.get("gradient_clipping", "auto")
    if clip == "auto":
        ds["gradient_clipping"] = clip_grad_value if clip_grad_value is not None else 0.0
    elif clip_grad_value is not None and float(clip) != clip_grad_value:
        raise ValueError(
            f"--task.opt.clip_grad_value={clip_grad_value} disagrees with gradient_clipping={clip} "
            f"in {path}; set one of them"
        )
    return ds


def compute_dtype_name(ds: dict[str, Any]) -> str:
    if ds.get("bf16", {}).get("enabled") is True:
        return "bfloat16"
    if ds.get("fp16", {}).get("enabled") is True:
        return "float16"
    return "float32"
