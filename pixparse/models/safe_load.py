"""Refuse checkpoint pickles that could run code before anything unpickles them for real.

DeepSpeed (its engine, zero_to_fp32 and ds_to_universal) loads every `.pt` file of a tag with
`torch.load(weights_only=False)`: a crafted `mp_rank_00_model_states.pt` would execute its
payload the moment `pixparse.app.export`, `--task.init_from`, `--train.resume` or the eval app
opens it. So every `.pt` file is first read with torch's restricted unpickler
(`weights_only=True`, memory-mapped: only the object structure is read, not the tensors) with
the few plain-data classes DeepSpeed puts in its files allowed; anything else is refused.
"""
import glob
import importlib
import os
import pickle
from typing import Any

import torch

# Plain-data classes DeepSpeed 0.16-0.19 pickles into its tags (found by loading ZeRO-0..3
# fp32/bf16/fp16 tags with the restricted unpickler), plus numpy's array reconstruction
# (our RNG files hold numpy's generator state). None of them runs code when unpickled.
_ALLOWED = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.dtypes.UInt32DType",
)


def _allowed_globals() -> list[Any]:
    found = []
    for name in _ALLOWED:
        module, _, attr = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):  # another numpy/deepspeed version: not needed there
            continue
    return found


def safe_torch_load(path: str, mmap: bool = False) -> Any:
    """torch.load with the restricted unpickler; a file that needs more raises ValueError
    naming the file and the refused global."""
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise ValueError(
            f"refusing to load {path}: it holds objects that could run code when unpickled "
            f"({detail}). Load only checkpoints you trust; if you wrote this one yourself with "
            f"another DeepSpeed version, open an issue naming the class above."
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"cannot read {path}: {e} (truncated or not a torch file?)") from None


def check_checkpoint_files(folder: str) -> int:
    """Read the structure of every .pt file under `folder` with the restricted unpickler
    (tensors memory-mapped, not read). Returns how many files were checked."""
    paths = sorted(glob.glob(os.path.join(folder, "**", "*.pt"), recursive=True))
    for path in paths:
        safe_torch_load(path, mmap=True)
    return len(paths)
