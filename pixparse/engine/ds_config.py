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


# Without --deepspeed_config: ds_configs/zero2_*.json, its precision from --task.dtype.
DEFAULT_DS_CONFIG: dict[str, Any] = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True},
    "steps_per_print": 1_000_000_000,
    "wall_clock_breakdown": False,
}
_PRECISION_KEYS = {"bfloat16": "bf16", "float16": "fp16"}


def native_bf16() -> tuple[bool, str]:
    """(bf16 is computed natively here, why): CUDA devices that support it; CPUs with AMX or
    AVX512-BF16 (elsewhere bf16 on CPU is emulated, several times slower than fp32)."""
    import torch

    if torch.cuda.is_available():
        ok = torch.cuda.is_bf16_supported()
        return ok, f"{torch.cuda.get_device_name()} {'supports' if ok else 'lacks'} bf16"
    cap = torch.backends.cpu.get_cpu_capability()
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    native = [f for f in ("amx_bf16", "avx512_bf16") if f in flags.split()]
    if native:
        return True, f"the CPU has {' and '.join(native)} (torch CPU capability {cap})"
    return False, f"the CPU has neither AMX nor AVX512-BF16 (torch CPU capability {cap}): bf16 would be emulated"


def resolve_dtype(dtype: str) -> tuple[str, str]:
    """--task.dtype -> (float32|bfloat16|float16, why); 'auto' is bf16 where computed natively."""
    if dtype != "auto":
        return dtype, "--task.dtype"
    ok, why = native_bf16()
    return ("bfloat16" if ok else "float32"), f"--task.dtype auto: {why}"


def _json_dtype(ds: dict[str, Any]) -> str | None:
    """The precision the JSON states (None: it states none, or "auto")."""
    stated = {k: ds[k].get("enabled") for k in ("bf16", "fp16") if isinstance(ds.get(k), dict)}
    for name, key in _PRECISION_KEYS.items():
        if stated.get(key) is True:
            return name
    if stated and all(v is False for v in stated.values()):
        return "float32"
    return None


def load_ds_config(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise ValueError(f"--deepspeed_config: file {path!r} does not exist (see ds_configs/)")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"--deepspeed_config: {path} is not valid JSON: {e}") from e


def resolve_ds_config(
    path: str | None,
    micro_batch_size: int,
    grad_accum_steps: int,
    world_size: int,
    clip_grad_value: float | None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """The final DeepSpeed dict for this run; every "auto" is filled, every conflict raised.
    `path` None: the built-in ZeRO-2 config. `dtype` (--task.dtype) fills a precision the JSON
    leaves unset or "auto" and must agree with one it states."""
    import copy

    ds = load_ds_config(path) if path else copy.deepcopy(DEFAULT_DS_CONFIG)
    path = path or "the built-in ZeRO-2 config (no --deepspeed_config)"
    for key, why in _OWNED_BY_PIXPARSE.items():
        if key in ds:
            raise ValueError(f"{path} sets {key!r}, but {why}; remove {key!r} from the JSON")
    stage = zero_stage(ds)
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"{path}: zero_optimization.stage must be 0-3, got {stage!r}")
    if ds.get("bf16", {}).get("enabled") is True and ds.get("fp16", {}).get("enabled") is True:
        raise ValueError(f"{path}: bf16 and fp16 are both enabled; enable one")
    stated = _json_dtype(ds)
    if dtype is not None:
        want, _ = resolve_dtype(dtype)
        if stated is not None and stated != want:
            raise ValueError(f"--task.dtype {dtype} ({want}) disagrees with {path}, which enables {stated}; "
                             f"drop --task.dtype or pass a {want} DeepSpeed config")
        if stated is None:
            for name, key in _PRECISION_KEYS.items():
                ds.setdefault(key, {})["enabled"] = name == want
    elif stated is None and any(isinstance(ds.get(k), dict) for k in ("bf16", "fp16")):
        raise ValueError(f"{path} leaves its precision \"auto\": set --task.dtype (float32, bfloat16, float16, auto)")
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


def zero_stage(ds: dict[str, Any]) -> int:
    """The ZeRO stage of a DeepSpeed dict (0: no `zero_optimization`, DeepSpeed's data parallel)."""
    return ds.get("zero_optimization", {}).get("stage", 0)


def compute_dtype_name(ds: dict[str, Any]) -> str:
    if ds.get("bf16", {}).get("enabled") is True:
        return "bfloat16"
    if ds.get("fp16", {}).get("enabled") is True:
        return "float16"
    return "float32"


def single_rank_zero(ds: dict[str, Any], world_size: int) -> list[str]:
    """On one rank ZeRO exchanges nothing. ZeRO-1/2: overlap_comm (a side stream and buffers for
    overlapping the exchange) and contiguous_gradients (a copy of every gradient into a bucket in
    its backward hook) only cost time there: turned off. ZeRO-3 without parameter offload: every parameter persistent (one rank's
    partition is the whole parameter, so a gathered parameter costs no memory beyond its
    partition, and DeepSpeed then fetches and releases nothing per module); overlap_comm and
    contiguous_gradients off as well (no bucket buffer of reduce_bucket_size elements, no copy of
    every gradient into it). Returns the keys changed."""
    zero = ds.get("zero_optimization", {})
    stage = zero_stage(ds)
    if world_size != 1 or stage not in (1, 2, 3):
        return []
    persistent: list[str] = []
    if stage == 3:
        if (zero.get("offload_param") or {}).get("device", "none") != "none":
            return []
        persistent = [k for k in ("stage3_param_persistence_threshold", "stage3_model_persistence_threshold")
                      if zero.get(k) != _ALL_PERSISTENT]
        for k in persistent:
            zero[k] = _ALL_PERSISTENT
    off = [k for k in ("overlap_comm", "contiguous_gradients") if zero.get(k)]
    for k in off:
        zero[k] = False
    return persistent + off


# a persistence threshold no parameter (or model) reaches
_ALL_PERSISTENT = 2**62
