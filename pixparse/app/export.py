"""`python -m pixparse.app.export <checkpoint tag dir> <out dir>`: plain safetensors + preset +
tokenizer (loadable without DeepSpeed: pixparse.models.export.load_exported), and optionally a
Hugging Face VisionEncoderDecoderModel folder in <out dir>/hf."""
import logging
import os
from typing import Literal

import torch

from pixparse.engine.checkpoint import MARKER
from pixparse.models.export import (
    hf_unsupported, load_weights, model_from_info, read_source, resolve_checkpoint_path, save_exported, save_hf_folder,
)
from pixparse.app.tool import run_tool

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export(
    checkpoint: str,
    output_dir: str,
    dtype: Literal["float32", "bfloat16", "float16"] | None = None,
    hf: bool = True,
) -> str:
    """Export a pixparse checkpoint.

    Args:
        checkpoint: A checkpoint tag folder, e.g. runs/x/checkpoints/step_00000320, or the
            checkpoint folder above it (its `latest` tag is exported).
        output_dir: Folder to write model.safetensors, model_config.json, tokenizer/ (and hf/).
        dtype: Precision of the exported weights (default: the precision the run trained in).
        hf: Also write a transformers VisionEncoderDecoderModel folder (<output_dir>/hf).
    """
    checkpoint = resolve_checkpoint_path(checkpoint)
    if not os.path.isfile(os.path.join(checkpoint, MARKER)):
        raise ValueError(f"{checkpoint} is not a complete pixparse checkpoint (no {MARKER})")
    model_cfg, tokenizer, info, weights = read_source(checkpoint)
    model = model_from_info(model_cfg, info)
    load_weights(model, weights())
    dtype = dtype or info.get("train_dtype", "float32")
    model = model.to(_DTYPES[dtype]).eval()
    save_exported(model, model_cfg, tokenizer, output_dir, info)
    reason = hf_unsupported(model)
    if hf and reason:
        logger.warning("%s: no hf/ folder, since %s (model.safetensors has every weight)", checkpoint, reason)
        hf = False
    if hf:
        save_hf_folder(model, tokenizer, info, os.path.join(output_dir, "hf"))
    print(f"exported {checkpoint} -> {output_dir} ({dtype}{', + hf/' if hf else ''})")
    return output_dir


def main(argv: list[str] | None = None) -> None:
    run_tool(export, argv, positional=True)


if __name__ == "__main__":
    main()
