"""Rank/world from the launcher's variables, process-group setup, small collectives."""
import atexit
import os
import socket
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
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    return rank, local_rank, world_size


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


def init_distributed() -> None:
    """Start the process group (a 1-process group when run without a launcher)."""
    import deepspeed

    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if not dist.is_initialized():
        deepspeed.init_distributed(auto_mpi_discovery=False, verbose=False)
        atexit.register(_unlink_shm_buffer)


def _unlink_shm_buffer() -> None:
    """DeepSpeed's CPU all-reduce maps a ~66 MB /dev/shm buffer per rank and never unlinks it: every
    CPU job would leave its ranks' buffers in RAM until reboot. Each rank unlinks its own at exit
    (the memory goes once every rank has unmapped it)."""
    import glob

    port, rank = os.environ.get("MASTER_PORT", ""), os.environ.get("LOCAL_RANK", "")
    if port and rank:
        for path in glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_{rank}"):
            try:
                os.unlink(path)
            except OSError:
                pass


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
