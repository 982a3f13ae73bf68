"""Measurements that are plain math or plain hooks: activation bytes, FLOPs, MFU."""
from contextlib import contextmanager
from collections.abc import Iterable, Iterator

import torch


@contextmanager
def count_saved_activations(exclude: Iterable[torch.Tensor] = ()) -> Iterator[dict[str, int]]:
    """Memory autograd holds for backward inside the block: the bytes of the distinct storages
    of saved tensors, leaving out those of `exclude` (pass the parameters: saved by reference,
    they are no new memory). Device-agnostic, so it measures activation memory on CPU too."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}
    stats = {"bytes": 0, "tensors": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in excluded and ptr not in storages:
            storages[ptr] = storage.nbytes()
            stats["bytes"] += storage.nbytes()
        stats["tensors"] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield stats


# Dense peak TFLOP/s per GPU by (device-name substring, dtype), from the vendors' data sheets
# (no sparsity). Longest matching name wins, so "H100 PCIe" is found before "H100".
PEAK_TFLOPS: dict[tuple[str, str], float] = {
    ("H200", "bfloat16"): 989.0, ("H200", "float16"): 989.0, ("H200", "float32"): 67.0,
    ("H100", "bfloat16"): 989.0, ("H100", "float16"): 989.0, ("H100", "float32"): 67.0,
    ("H100 PCIe", "bfloat16"): 756.0, ("H100 PCIe", "float16"): 756.0, ("H100 PCIe", "float32"): 51.0,
    ("A100", "bfloat16"): 312.0, ("A100", "float16"): 312.0, ("A100", "float32"): 19.5,
    ("L40S", "bfloat16"): 362.0, ("L40S", "float16"): 362.0,
    ("A10G", "bfloat16"): 70.0, ("A10G", "float16"): 70.0,
    ("L4", "bfloat16"): 121.0, ("L4", "float16"): 121.0,
    ("V100", "float16"): 125.0, ("V100", "float32"): 15.7,
    ("RTX 4090", "bfloat16"): 165.0, ("RTX 4090", "float16"): 165.0,
}


def peak_tflops(device_name: str, dtype: str) -> float | None:
    """Dense peak of this device in this dtype, or None if unknown (then no MFU is reported)."""
    matches = [(len(name), peak) for (name, dt), peak in PEAK_TFLOPS.items()
               if dt == dtype and name.lower() in device_name.lower()]
    return max(matches)[1] if matches else None


def mfu(tflops_per_device: float, peak: float | None) -> float | None:
    """Model FLOPs utilization in [0, 1] (model FLOPs only: recompute does not count)."""
    return None if not peak else tflops_per_device / peak
