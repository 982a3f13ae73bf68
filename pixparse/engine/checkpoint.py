"""DeepSpeed checkpoints made atomic: step_XXXXXXXX tags, a completion marker, a 'latest' pointer
that only ever names a complete tag, per-rank RNG states, keep-last-k pruning.

Save order: every rank writes its DeepSpeed shards and RNG file into <tag>.partial -> all agree
it succeeded -> rank 0 writes assets and the marker, renames the folder to <tag>, replaces
'latest' (write tmp + rename) -> older tags are pruned. A crash at any point leaves 'latest' on
a complete tag.
"""
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pixparse.models.export import CHECKPOINT_ASSETS
from pixparse.models.safe_load import (check_checkpoint_files, inside, no_glob_chars, plain_name,
                                       restricted_torch_load, safe_torch_load)

logger = logging.getLogger(__name__)

_TAG = re.compile(r"^step_(\d{8})$")
MARKER = "pixparse_state.json"
LATEST = "latest"


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


def list_complete_tags(ckpt_dir: str) -> list[str]:
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(t for t in os.listdir(ckpt_dir)
                  if _TAG.match(t) and os.path.isfile(os.path.join(ckpt_dir, t, MARKER)))


def latest_tag(ckpt_dir: str) -> str | None:
    """The tag `latest` names, if any; it must be a step tag folder beside it (ValueError)."""
    try:
        with open(os.path.join(ckpt_dir, LATEST)) as f:
            tag = f.read(256).strip()
    except OSError:
        return None
    if not tag:
        return None
    if not _TAG.match(tag):
        raise ValueError(f"{os.path.join(ckpt_dir, LATEST)} names {tag!r}, not a step_XXXXXXXX tag; "
                         f"refusing to follow it (write the name of a tag folder beside it)")
    return tag


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


PARTIAL = ".partial"  # a tag being written; never listed, renamed into place when complete


def prune(ckpt_dir: str, current: str, keep_last_k: int) -> list[str]:
    """Delete complete tags older than `current` beyond the newest `keep_last_k` (current
    included). Tags of later steps (left by a rollback: resuming from an older tag) are not
    this run's history to prune: they are kept and reported. Returns the deleted tags."""
    tags = list_complete_tags(ckpt_dir)
    older = [t for t in tags if t < current]
    newer = [t for t in tags if t > current]
    if newer:
        logger.warning("checkpoints of later steps %s are kept (left by resuming from an earlier tag); "
                       "'latest' names %s", newer, current)
    doomed = older[: max(0, len(older) - (keep_last_k - 1))]
    for old in doomed:
        shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)
    return doomed


def clean_partial(ckpt_dir: str) -> list[str]:
    """Remove tags whose save never finished (a crash or kill mid-save); returns their names."""
    if not os.path.isdir(ckpt_dir):
        return []
    partial = sorted(d for d in os.listdir(ckpt_dir) if d.endswith(PARTIAL))
    for d in partial:
        logger.warning("removing %s: a checkpoint whose save did not finish", os.path.join(ckpt_dir, d))
        shutil.rmtree(os.path.join(ckpt_dir, d), ignore_errors=True)
    return partial


def _tag_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def _space_error(ckpt_dir: str, tag: str, need: int, free: int, detail: str) -> ValueError:
    tags = list_complete_tags(ckpt_dir)
    kept = f"; the last checkpoint {tags[-1]} is intact" if tags else ""
    return ValueError(
        f"saving checkpoint {tag} to {ckpt_dir}: {detail}: it needs about {need / 2**20:.1f} MiB and "
        f"{free / 2**20:.1f} MiB are free there{kept}. Free space, lower --train.keep_last_k or point "
        f"--train.checkpoint_dir at a larger disk."
    )


def _expected_bytes(engine: Any, ckpt_dir: str) -> int:
    """What the next tag will take: the last tag's size, or before the first one 16 bytes per
    parameter (fp32 master + two Adam moments + the module weights), with 10% to spare."""
    tags = list_complete_tags(ckpt_dir)
    if tags:
        return int(1.1 * _tag_bytes(os.path.join(ckpt_dir, tags[-1])))
    numel = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    return int(1.1 * 16 * numel)


def save(
    engine: Any,
    ckpt_dir: str,
    step: int,
    state: dict[str, Any],
    keep_last_k: int,
    save_assets: Callable[[str], None] | None = None,
) -> str:
    """Collective: call on all ranks. `save_assets(dir)` (rank 0) writes what export needs
    (preset, tokenizer) into <tag>/assets. Returns the tag folder.

    Everything is written into <tag>.partial, which rank 0 renames to <tag> once every rank's
    files and the marker are on disk, then 'latest' moves. A kill at any moment leaves 'latest'
    on a complete tag (a re-saved tag is swapped in only when complete) and at most a .partial
    folder, removed at the next start. Too little free space for the tag stops every rank with a
    clear error before anything is written; the previous checkpoint stays as it was.
    """
    tag = tag_for_step(step)
    path, partial = os.path.join(ckpt_dir, tag), os.path.join(ckpt_dir, tag + PARTIAL)
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(partial, ignore_errors=True)
        os.makedirs(ckpt_dir, exist_ok=True)
    dist.barrier()
    # A full disk is found before writing: DeepSpeed's save is collective inside, so a rank whose
    # write fails half-way cannot tell the others (they would wait in its barriers).
    need, free = _expected_bytes(engine, ckpt_dir), shutil.disk_usage(ckpt_dir).free
    short = torch.tensor([1.0 if free < need else 0.0], device=engine.device)  # NCCL: device tensors
    dist.all_reduce(short, op=dist.ReduceOp.MAX)
    if short.item():
        raise _space_error(ckpt_dir, tag, need, free, "not enough disk space")
    try:
        engine.save_checkpoint(ckpt_dir, tag=tag + PARTIAL, client_state={"pixparse": state}, save_latest=False)
        torch.save(rng_state(), os.path.join(partial, f"rng_state_rank{rank}.pt"))
    except (OSError, RuntimeError) as e:  # torch's writer reports ENOSPC as 'iostream error'
        # Raised at once: this process exits and the launcher ends the others. The .partial
        # folder is removed at the next start; 'latest' still names the last complete tag.
        free = shutil.disk_usage(ckpt_dir).free
        raise _space_error(ckpt_dir, tag, need, free, f"writing failed ({type(e).__name__}: {e})") from e
    dist.barrier()  # every rank's files are on disk
    if rank == 0:
        if save_assets is not None:
            save_assets(os.path.join(partial, CHECKPOINT_ASSETS))
        meta = dict(state, world_size=dist.get_world_size())
        _atomic_write(os.path.join(partial, MARKER), json.dumps(meta, indent=2))
        if os.path.isdir(path):  # re-saving a tag: swap it in only now that it is complete
            old = path + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
            os.rename(partial, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(partial, path)
        _atomic_write(os.path.join(ckpt_dir, LATEST), tag)
        prune(ckpt_dir, tag, keep_last_k)
    dist.barrier()
    return path


def resolve_resume(resume: str, ckpt_dir: str) -> tuple[str, str]:
    """(checkpoint dir, tag) for --train.resume 'latest' or a step folder; the tag must be complete
    and hold only a checkpoint's files (see safe_load.check_checkpoint_files)."""
    if resume == "latest":
        latest = os.path.join(ckpt_dir, LATEST)
        if not os.path.isfile(latest):
            raise ValueError(f"--train.resume latest: no {latest}; no checkpoint to resume from")
        tag = latest_tag(ckpt_dir)
        if tag is None:
            raise ValueError(f"--train.resume latest: {latest} is empty")
        path = os.path.join(ckpt_dir, tag)
        inside(path, ckpt_dir, "--train.resume latest")
    else:
        path = os.path.abspath(resume.rstrip("/"))
        ckpt_dir, tag = os.path.dirname(path), os.path.basename(path)
        plain_name(tag, "--train.resume")
    no_glob_chars(path, "--train.resume")
    if not os.path.isdir(path):
        raise ValueError(f"--train.resume: checkpoint folder {path} does not exist")
    if not os.path.isfile(os.path.join(path, MARKER)):
        raise ValueError(
            f"--train.resume: {path} is incomplete (no {MARKER}: the save did not finish); "
            f"resume from an earlier tag: {list_complete_tags(ckpt_dir) or 'none complete'}"
        )
    check_checkpoint_files(path)
    return ckpt_dir, tag


def read_state(ckpt_dir: str, tag: str) -> dict[str, Any]:
    with open(os.path.join(ckpt_dir, tag, MARKER)) as f:
        return json.load(f)


@dataclass
class ResumeSource:
    load_dir: str  # what DeepSpeed's load_checkpoint reads (the universal copy when elastic)
    tag: str
    rng_dir: str  # the original tag folder (RNG files, marker)
    state: dict[str, Any]
    universal: bool


UNIVERSAL_DIR = "universal"


def _read_world_size(state: dict[str, Any], where: str) -> int:
    world_size = state.get("world_size")
    if not isinstance(world_size, int) or isinstance(world_size, bool) or not 1 <= world_size <= 1 << 20:
        raise ValueError(f"{where}: world_size {world_size!r} is not a rank count; the file is damaged")
    return world_size


def saved_world_size(ckpt_dir: str, tag: str) -> int:
    """The number of ranks that wrote the (complete) tag."""
    return _read_world_size(read_state(ckpt_dir, tag), os.path.join(ckpt_dir, tag, MARKER))


def optimizer_sharded(tag_dir: str) -> bool:
    """Whether a tag holds ZeRO's optimizer shards, one per rank (`*optim_states.pt`). A tag
    written without ZeRO (stage 0) keeps the whole optimizer in mp_rank_00_model_states.pt."""
    return any(name.endswith("optim_states.pt") for name in os.listdir(tag_dir))


def check_resume_stage(ckpt_dir: str, tag: str, stage: int) -> None:
    """A tag written with ZeRO (stages 1-3) resumes under ZeRO, one written without (stage 0) under
    stage 0: otherwise DeepSpeed finds no optimizer state where it looks. Before any process group."""
    tag_dir = os.path.join(ckpt_dir, tag)
    sharded = optimizer_sharded(tag_dir)
    if sharded != (stage > 0):
        raise ValueError(
            f"--train.resume: {tag_dir} was written {'with ZeRO (stage 1-3)' if sharded else 'without ZeRO (stage 0)'}"
            f" and this run has ZeRO stage {stage}; resume with a --deepspeed_config of "
            f"{'ZeRO stage 1, 2 or 3' if sharded else 'zero_optimization.stage 0'}")


def prepare_resume(ckpt_dir: str, tag: str, world_size: int) -> ResumeSource:
    """The tag resumed (resolve_resume's answer); when the world size changed, convert a ZeRO tag
    once (rank 0) to DeepSpeed's universal checkpoint format, which loads on any number of ranks.
    A stage-0 tag loads as it is on any number of ranks (every rank reads the whole model and
    optimizer from mp_rank_00_model_states.pt). Collective.

    The conversion runs under the restricted unpickler (`python -m pixparse.models.safe_load`),
    writes into <ckpt_dir>/universal/<tag>.partial and renames it into place when done; a folder
    left there is reused only if it holds a universal checkpoint's files and nothing else.
    """
    state = read_state(ckpt_dir, tag)
    tag_dir = os.path.join(ckpt_dir, tag)
    check_checkpoint_files(tag_dir)  # again where it is read: nothing was added since the check
    if _read_world_size(state, os.path.join(tag_dir, MARKER)) == world_size or not optimizer_sharded(tag_dir):
        return ResumeSource(ckpt_dir, tag, tag_dir, state, universal=False)
    universal_dir = os.path.join(ckpt_dir, UNIVERSAL_DIR)
    out = os.path.join(universal_dir, tag)
    if dist.get_rank() == 0:
        if os.path.islink(universal_dir) or os.path.islink(out):
            raise ValueError(f"--train.resume: {universal_dir} or {out} is a symbolic link; refusing to "
                             f"convert into it (remove the link)")
        os.makedirs(universal_dir, exist_ok=True)
        inside(out, ckpt_dir, "--train.resume: the universal conversion")
        if not os.path.isfile(os.path.join(out, MARKER)):
            _convert_to_universal(tag_dir, out, state, world_size)
    dist.barrier()
    check_checkpoint_files(out, layout="universal")
    return ResumeSource(universal_dir, tag, tag_dir, state, universal=True)


def _convert_to_universal(tag_dir: str, out: str, state: dict[str, Any], world_size: int) -> None:
    logger.info("converting %s (%d ranks) to a universal checkpoint for %d ranks",
                tag_dir, state["world_size"], world_size)
    partial = out + PARTIAL
    for stale in (out, partial):  # inside <ckpt_dir>/universal, checked by the caller; no links
        if os.path.isdir(stale):
            shutil.rmtree(stale)
    proc = subprocess.run(
        [sys.executable, "-m", "pixparse.models.safe_load", "--input_folder", tag_dir,
         "--output_folder", partial, "--inject_missing_state"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    if proc.returncode != 0:
        lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
        raise ValueError(f"--train.resume: converting {tag_dir} to a universal checkpoint failed (exit "
                         f"{proc.returncode}): {lines[-1] if lines else 'no message'}")
    _atomic_write(os.path.join(partial, MARKER), json.dumps(state))
    os.rename(partial, out)


def load_checkpoint(engine: Any, source: ResumeSource) -> Any:
    """DeepSpeed's load_checkpoint with every unpickling it does restricted (see safe_load)."""
    with restricted_torch_load():
        return engine.load_checkpoint(source.load_dir, tag=source.tag)


def load_rng(tag_dir: str, rank: int) -> bool:
    """Restore this rank's RNG state if the checkpoint has one for it."""
    path = os.path.join(tag_dir, f"rng_state_rank{rank}.pt")
    if not os.path.isfile(path):
        return False
    set_rng_state(safe_torch_load(path))
    return True
