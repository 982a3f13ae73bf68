"""`python -m pixparse.app.export <checkpoint tag dir> <out dir>`: plain safetensors + preset +
tokenizer (loadable without DeepSpeed: pixparse.models.export.load_exported), and optionally a
Hugging Face VisionEncoderDecoderModel folder in <out dir>/hf."""
import json
import logging
import os
from typing import Literal

import torch
from jsonargparse import auto_cli

from pixparse.engine.checkpoint import ASSETS, MARKER
from pixparse.engine.export import consolidated_state_dict
from pixparse.models.config import ModelConfig
from pixparse.models.cruller import create_model
from pixparse.models.export import save_exported, to_hf_vision_encoder_decoder

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def export(
    checkpoint: str,
    output_dir: str,
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16",
    hf: bool = True,
) -> str:
    """Export a pixparse checkpoint.

    Args:
        checkpoint: A checkpoint tag folder, e.g. runs/x/checkpoints/step_00000320.
        output_dir: Folder to write model.safetensors, model_config.json, tokenizer/ (and hf/).
        dtype: Precision of the exported weights.
        hf: Also write a transformers VisionEncoderDecoderModel folder (<output_dir>/hf).
    """
    from transformers import AutoTokenizer

    if not os.path.isfile(os.path.join(checkpoint, MARKER)):
        raise ValueError(f"{checkpoint} is not a complete pixparse checkpoint (no {MARKER})")
    assets = os.path.join(checkpoint, ASSETS)
    with open(os.path.join(assets, "model_config.json")) as f:
        raw = json.load(f)
    info = raw.pop("pixparse")
    model_cfg = ModelConfig.from_dict(raw)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(assets, "tokenizer"), local_files_only=True)
    model = create_model(model_cfg, info["vocab_size"], info["pad_token_id"], info["eos_token_id"])
    state = consolidated_state_dict(checkpoint)
    prefix = "model."  # the task module wraps the model as .model
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    tied = "text_decoder.model.lm_head.weight"
    if tied not in weights:  # stored once as the embedding when tied
        weights[tied] = weights["text_decoder.model.model.decoder.embed_tokens.weight"]
    model.load_state_dict(weights, strict=True)
    model = model.to(_DTYPES[dtype]).eval()
    save_exported(model, model_cfg, tokenizer, output_dir, info)
    if hf:
        hf_model = to_hf_vision_encoder_decoder(model, info["decoder_start_token_id"])
        hf_model.save_pretrained(os.path.join(output_dir, "hf"))
        tokenizer.save_pretrained(os.path.join(output_dir, "hf"))
    print(f"exported {checkpoint} -> {output_dir} ({dtype}{', + hf/' if hf else ''})")
    return output_dir


def main(argv: list[str] | None = None) -> None:
    try:
        auto_cli(export, args=argv)
    except ValueError as e:
        raise SystemExit(f"pixparse.app.export: error: {e}") from None


if __name__ == "__main__":
    main()
