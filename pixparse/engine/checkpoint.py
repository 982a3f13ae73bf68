"""DeepSpeed checkpoints: step_XXXXXXXX tags, a 'latest' pointer, keep-last-k pruning."""
import logging
import os
import re
import shutil
from typing import Any

import torch.distributed as dist

logger = logging.getLogger(__name__)

_TAG = re.compile(r"^step_(\d{8})$")


def tag_for_step(step: int) -> str:
    return f"step_{step:08d}"


def list_tags(ckpt_dir: str) -> list[str]:
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(t for t in os.listdir(ckpt_dir) if _TAG.match(t))


def save(engine: Any, ckpt_dir: str, step: int, client_state: dict[str, Any], keep_last_k: int) -> str:
    """Save on all ranks (collective); rank 0 then prunes older tags. Returns the tag folder."""
    tag = tag_for_step(step)
    engine.save_checkpoint(ckpt_dir, tag=tag, client_state={"pixparse": client_state})
    dist.barrier()  # every rank's shard is on disk before anything is deleted
    if dist.get_rank() == 0:
        for old in list_tags(ckpt_dir)[:-keep_last_k]:
            shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)
    dist.barrier()
    return os.path.join(ckpt_dir, tag)


def resolve_resume(resume: str, ckpt_dir: str) -> tuple[str, str]:
    """(checkpoint dir, tag) for --train.resume 'latest' or a step folder path."""
    if resume == "latest":
        latest = os.path.join(ckpt_dir, "latest")
        if not os.path.isfile(latest):
            raise ValueError(f"--train.resume latest: no {latest}; no checkpoint to resume from")
        with open(latest) as f:
            tag = f.read().strip()
        path = os.path.join(ckpt_dir, tag)
    else:
        path = os.path.abspath(resume.rstrip("/"))
        ckpt_dir, tag = os.path.dirname(path), os.path.basename(path)
    if not os.path.isdir(path):
        raise ValueError(f"--train.resume: checkpoint folder {path} does not exist")
    return ckpt_dir, tag
