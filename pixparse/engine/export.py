"""Consolidate a DeepSpeed checkpoint (any ZeRO stage) into one plain state dict."""
import glob
import logging
import os

import torch

logger = logging.getLogger(__name__)


def consolidated_state_dict(tag_dir: str) -> dict[str, torch.Tensor]:
    """fp32 weights of the module DeepSpeed wrapped, keys as in that module.

    ZeRO-2/3: the fp32 master copy, gathered from every rank's optimizer partition by
    DeepSpeed's zero_to_fp32. ZeRO-0/1 shard nothing of the weights: read the module states
    (in the precision they were trained in) and upcast.
    """
    ckpt_dir, tag = os.path.dirname(os.path.abspath(tag_dir)), os.path.basename(tag_dir.rstrip("/"))
    if glob.glob(os.path.join(tag_dir, "*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            return dict(get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag))
        except ValueError as e:  # ZeRO-0/1 layouts are not zero_to_fp32 convertible
            logger.info("zero_to_fp32 does not apply (%s); reading module states", e)
    states = os.path.join(tag_dir, "mp_rank_00_model_states.pt")
    if not os.path.isfile(states):
        raise ValueError(f"{tag_dir} holds no DeepSpeed model states (mp_rank_00_model_states.pt)")
    module = torch.load(states, map_location="cpu", weights_only=False)["module"]
    return {k: v.float() for k, v in module.items()}
