"""Rank/world from the launcher's variables, process-group setup, small collectives."""
import os
import socket
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as set by deepspeed/torchrun/srun; (0, 0, 1) without one."""
    if "SLURM_PROCID" in os.environ and "RANK" not in os.environ:
        # srun-launched: DeepSpeed/torch read RANK etc., so mirror SLURM's variables.
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["LOCAL_RANK"] = os.environ["SLURM_LOCALID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    rank, local_rank, world_size = (_env_int(var, default) for var, default in
                                    (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"the launcher's variables say rank {rank} of WORLD_SIZE {world_size}; "
                         f"check RANK and WORLD_SIZE")
    return rank, local_rank, world_size


def _env_int(var: str, default: int) -> int:
    """A launcher variable as an integer; one line naming it when it is not one."""
    value = os.environ.get(var)
    if value is None or not value.strip():
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment variable {var}={value!r} is not an integer; the launcher "
                         f"(deepspeed, torchrun, srun) sets it: unset it or fix it") from None


def local_world_size() -> int:
    """Processes on this node, from the launcher (torchrun: LOCAL_WORLD_SIZE, deepspeed:
    LOCAL_SIZE, SLURM: SLURM_NTASKS_PER_NODE); 1 without one."""
    for var in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def share_cpu_threads() -> int | None:
    """Give each local rank its share of the cores for torch's intra-op threads, unless the
    user set OMP_NUM_THREADS. The deepspeed launcher sets none, and N ranks each using every
    core slowed 2-rank CPU runs here about 5x. Returns the thread count set, if any."""
    import torch

    if "OMP_NUM_THREADS" in os.environ:
        return None
    threads = max(1, (os.cpu_count() or 1) // local_world_size())
    torch.set_num_threads(threads)
    return threads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def skip_absent_nvml_probe() -> bool:
    """Importing DeepSpeed sets PYTORCH_NVML_BASED_CUDA_CHECK=1 (so probing for a GPU creates no
    CUDA context). Where NVML is absent (a machine without an NVIDIA driver) torch then tries to
    load it on every torch.cuda.is_available(), which every optimizer step calls (0.14 ms a call
    here, twice a step in the engine), and falls back to the CUDA runtime's count, the answer
    it gives without the setting. There it is turned off: the same answers, without the
    attempt. Returns whether it was turned off."""
    import ctypes

    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1":
        return False
    try:
        ctypes.CDLL("libnvidia-ml.so.1")  # the library torch's probe loads
        return False
    except OSError:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
        return True


def skip_shm_inference_op() -> None:
    """On the CPU accelerator, DeepSpeed's comm backend builds a shared-memory all-reduce op when it
    starts (a g++ build of ~25-50 s on a machine's first run, cached in TORCH_EXTENSIONS_DIR) and
    maps a ~66 MB /dev/shm buffer per rank that it never unlinks. Only `inference_all_reduce`
    (tensor-parallel inference) uses that op; training's collectives go through the process group.
    So it is not built: no compiler needed, no buffers left in RAM."""
    import importlib

    # By its module path: `deepspeed.comm` re-exports torch itself under the name `torch`.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


DEEPSPEED_TESTED = ((0, 19), (0, 20))  # [from, to): the versions whose ZeRO internals engine.zero_fast patches


def deepspeed_tested(found: str) -> bool:
    """Whether DeepSpeed version `found` is in DEEPSPEED_TESTED."""
    parts = tuple(int(p) for p in found.split(".")[:2] if p.isdigit())
    low, high = DEEPSPEED_TESTED
    return len(parts) == 2 and low <= parts < high


def check_deepspeed_version() -> str:
    """The installed DeepSpeed's version, if in the range the engine is tested on; else a one-line
    ValueError naming it and the fix (read from the package metadata: no import)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("deepspeed")
    except PackageNotFoundError:
        raise ValueError("DeepSpeed is not installed: pip install 'deepspeed>=0.19,<0.20'") from None
    low, high = DEEPSPEED_TESTED
    if not deepspeed_tested(found):
        raise ValueError(f"DeepSpeed {found} is installed; pixparse's engine is tested on "
                         f"{'.'.join(map(str, low))}.x (it replaces some of its ZeRO internals): "
                         f"pip install 'deepspeed>={'.'.join(map(str, low))},<{'.'.join(map(str, high))}'")
    return found


def init_distributed(patch_deepspeed: bool = True) -> None:
    """Start the process group (a 1-process group when run without a launcher; its collectives
    done locally unless not `patch_deepspeed`)."""
    import deepspeed

    skip_absent_nvml_probe()
    skip_shm_inference_op()
    # DeepSpeed's ZeRO gathers call torch's all_gather_into_tensor, deprecated in this torch: a
    # warning on every multi-rank run that the user can do nothing about.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
                            category=FutureWarning)

    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not dist.is_initialized():
        deepspeed.init_distributed(auto_mpi_discovery=False, verbose=False)
    if dist.get_world_size() == 1 and patch_deepspeed:
        from pixparse.engine.zero_fast import local_collectives

        local_collectives(True)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a batch to `device` (asynchronously from pinned memory); other entries as they are."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """rank `src`'s obj on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class LauncherWatch:
    """Calls `on_lost()` once if this process's launcher goes away.

    `deepspeed` (its runner) installs no signal handler for single-node runs: a SIGTERM to it
    ends it at once, while its per-node launcher and the ranks train on, unattended. So each
    rank remembers its parent and its parent's parent at start, and a daemon thread checks every
    `period_s` that both are still there (a dead runner re-parents the per-node launcher; a dead
    direct parent re-parents us). The caller treats it as SIGTERM: checkpoint, exit 75.
    """

    def __init__(self, on_lost: Callable[[], None], period_s: float = 1.0) -> None:
        import threading

        import psutil

        self.parent = os.getppid()
        try:
            self.grandparent = psutil.Process(self.parent).ppid()
        except psutil.Error:
            self.grandparent = None
        self.on_lost = on_lost
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="launcher-watch", daemon=True)
        self._thread.start()

    def lost(self) -> bool:
        import psutil

        if os.getppid() != self.parent:
            return True
        if self.grandparent is None:
            return False
        try:
            return psutil.Process(self.parent).ppid() != self.grandparent
        except psutil.Error:
            return True

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            if self.lost():
                self.on_lost()
                return

    def stop(self) -> None:
        self._stop.set()
