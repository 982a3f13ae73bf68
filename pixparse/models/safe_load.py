"""Checkpoint files are read so that no file runs code and no path leaves its folder.

DeepSpeed (its engine's load_checkpoint, zero_to_fp32, ds_to_universal and the universal loader)
unpickles checkpoint files with `torch.load(weights_only=False)`, on files it finds itself
(globbing, listing folders). A list of files checked beforehand would miss what DeepSpeed finds
and race it, so the rule is enforced at the load:

- `restricted_torch_load()`: while inside, every `torch.load` of the process (DeepSpeed's own
  calls included) goes through torch's restricted unpickler (`weights_only=True`) with the few
  plain-data classes DeepSpeed pickles allowed; anything else is refused by the file's name.
  `python -m pixparse.models.safe_load ...` runs ds_to_universal under it, in the subprocess and
  the process pool the conversion forks.
- `check_checkpoint_files()`: a tag or universal folder holds only the files a pixparse or
  DeepSpeed checkpoint has (by name, walked without following links); any other file, a
  symbolic link or a dot-file is refused by name. It also reads each pickle's structure (tensors
  memory-mapped) to fail early, before any process group.
- `plain_name()`, `inside()`: a name read from a checkpoint or a bucket (`latest`, an object key)
  is a plain name and a path built from it stays inside its folder, symlinks resolved.
"""
import contextlib
import importlib
import os
import pickle
import re
import sys
from collections.abc import Iterator
from typing import Any

import torch

# Plain-data classes DeepSpeed 0.16-0.19 pickles into its tags (found by loading ZeRO-0..3
# fp32/bf16/fp16 tags and universal conversions with the restricted unpickler), plus numpy's
# array reconstruction (our RNG files hold numpy's generator state). None runs code when unpickled.
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

# Every file a pixparse checkpoint tag or its universal conversion holds, by path inside it.
_TAG_FILES = re.compile(
    r"^(?:pixparse_state\.json"
    r"|rng_state_rank\d+\.pt"
    r"|mp_rank_\d+_model_states\.pt"
    r"|zero_pp_rank_\d+_mp_rank_\d+_model_states\.pt"
    r"|(?:bf16_)?zero_pp_rank_\d+_mp_rank_\d+_optim_states\.pt"
    r"|assets/model_config\.json"
    r"|assets/tokenizer/[A-Za-z0-9][A-Za-z0-9_.-]*\.(?:json|model|txt|jinja|tiktoken))$"
)
_UNIVERSAL_FILES = re.compile(
    r"^(?:pixparse_state\.json"
    r"|mp_rank_\d+_model_states\.pt"
    r"|zero_pp_rank_\d+_mp_rank_\d+_model_states\.pt"
    r"|zero/optimizer_state\.pt"
    r"|zero/[A-Za-z0-9_][A-Za-z0-9_.]*/(?:fp32|exp_avg|exp_avg_sq|step)\.pt)$"
)
_LAYOUTS = {"tag": _TAG_FILES, "universal": _UNIVERSAL_FILES}
_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
GLOB_CHARS = "*?[]"


def _allowed_globals() -> list[Any]:
    found = []
    for name in _ALLOWED:
        module, _, attr = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):  # another numpy/deepspeed version: not needed there
            continue
    return found


class CheckpointFileError(ValueError):
    """A checkpoint file refused (could run code, not a checkpoint's file) or unreadable."""


_torch_load = torch.load  # the real one, whatever is patched later


def safe_torch_load(path: Any, mmap: bool = False, map_location: Any = "cpu") -> Any:
    """torch.load with the restricted unpickler. A file that needs more, or that cannot be read
    (truncated, malformed, not a torch file), raises ValueError naming the file."""
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", repr(path))
    if isinstance(path, (str, os.PathLike)) and os.path.islink(path):
        raise CheckpointFileError(f"refusing to load {name}: it is a symbolic link; checkpoints hold plain files")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return _torch_load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        detail = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise CheckpointFileError(
            f"refusing to load {name}: it holds objects that could run code when unpickled "
            f"({detail}). Load only checkpoints you trust; if you wrote this one yourself with "
            f"another DeepSpeed version, open an issue naming the class above."
        ) from None
    except Exception as e:  # noqa: BLE001 - any malformed pickle (TypeError, MemoryError, ...) is the file's fault
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointFileError(f"cannot read {name}: {type(e).__name__}: {detail} (truncated, damaged "
                                  f"or not a torch file?)") from None


def _restricted_load(f: Any, map_location: Any = None, pickle_module: Any = None, *, weights_only: Any = None,
                     mmap: Any = None, **pickle_load_args: Any) -> Any:
    """Drop-in for torch.load: the caller's weights_only=False is overridden."""
    return safe_torch_load(f, mmap=bool(mmap), map_location=map_location)


@contextlib.contextmanager
def restricted_torch_load() -> Iterator[None]:
    """Inside, every `torch.load` of this process is `safe_torch_load` (nested use is fine)."""
    if torch.load is _restricted_load:
        yield
        return
    torch.load = torch.serialization.load = _restricted_load
    try:
        yield
    finally:
        torch.load = torch.serialization.load = _torch_load


def check_checkpoint_files(folder: str, layout: str = "tag") -> int:
    """Refuse a checkpoint folder holding anything but a pixparse/DeepSpeed checkpoint's files
    (by name; symbolic links and dot-files included), then read the structure of each pickle with
    the restricted unpickler (tensors memory-mapped). Returns how many pickles were checked."""
    pattern = _LAYOUTS[layout]
    root = os.path.realpath(folder)
    pickles = []
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel)) as entries:
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                where = os.path.join(folder, name)
                if entry.is_symlink():
                    raise CheckpointFileError(f"refusing checkpoint {folder}: {where} is a symbolic link; "
                                              f"checkpoints hold plain files (copy the file in, or remove the link)")
                if entry.is_dir(follow_symlinks=False):
                    if name.count("/") >= 3 or not _PLAIN.match(entry.name):
                        raise CheckpointFileError(f"refusing checkpoint {folder}: unexpected folder {where}")
                    stack.append(name)
                elif not entry.is_file(follow_symlinks=False) or not pattern.match(name):
                    raise CheckpointFileError(f"refusing checkpoint {folder}: {where} is not a file a pixparse or "
                                              f"DeepSpeed checkpoint has; remove it if you put it there, else do "
                                              f"not trust this checkpoint")
                elif name.endswith(".pt"):
                    pickles.append(where)
    for path in sorted(pickles):
        safe_torch_load(path, mmap=True)
    return len(pickles)


def plain_name(name: str, what: str) -> str:
    """`name` if it is a plain file name (no separator, not '.' or '..', no glob characters)."""
    if not _PLAIN.match(name):
        raise ValueError(f"{what} names {name!r}, which is not a plain folder name (letters, digits, '_', "
                         f"'.', '-'); refusing a path that could leave its folder")
    return name


def inside(path: str, root: str, what: str) -> str:
    """`path` if, symlinks resolved, it lies inside `root`; else ValueError naming `what`."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    if real != base and not real.startswith(base + os.sep):
        raise ValueError(f"{what}: {path} resolves to {real}, outside {base}; refusing to read or write there")
    return path


def no_glob_chars(path: str, flag: str) -> str:
    """DeepSpeed finds checkpoint files by glob patterns built from the folder's path: a path with
    glob characters would match other folders' files."""
    bad = sorted({c for c in path if c in GLOB_CHARS})
    if bad:
        raise ValueError(f"{flag}: {path!r} contains {''.join(bad)!r}; DeepSpeed reads checkpoints by glob "
                         f"pattern, so such a path could read another folder's files. Rename the folder.")
    return path


def _convert_main(argv: list[str]) -> None:
    """ds_to_universal under the restricted unpickler (its forked pool workers inherit it)."""
    from deepspeed.checkpoint import ds_to_universal

    sys.argv = ["ds_to_universal", *argv]
    args = ds_to_universal.parse_arguments()
    with restricted_torch_load():
        ds_to_universal.main(args)


if __name__ == "__main__":
    try:
        _convert_main(sys.argv[1:])
    except ValueError as e:
        raise SystemExit(f"pixparse: error: {e}") from None
