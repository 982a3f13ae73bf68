"""Plain-weights export and loading (no DeepSpeed), and a Hugging Face
VisionEncoderDecoderModel folder so `generate()` works in transformers directly."""
import json
import os
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from pixparse.models.config import ModelConfig
from pixparse.models.cruller import Cruller, create_model

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "model_config.json"
TOKENIZER_DIR = "tokenizer"


def save_exported(
    model: Cruller, model_cfg: ModelConfig, tokenizer: Any, out_dir: str, extra: dict[str, Any]
) -> None:
    """<out_dir>/model.safetensors (tied weights stored once), model_config.json, tokenizer/."""
    os.makedirs(out_dir, exist_ok=True)
    save_model(model, os.path.join(out_dir, WEIGHTS))  # dedups the tied LM head / embedding
    with open(os.path.join(out_dir, MODEL_CONFIG), "w") as f:
        json.dump({**model_cfg.to_dict(), "pixparse": extra}, f, indent=2)
    tokenizer.save_pretrained(os.path.join(out_dir, TOKENIZER_DIR))


def load_exported(export_dir: str, dtype: torch.dtype = torch.float32) -> tuple[Cruller, Any, dict[str, Any]]:
    """(model, tokenizer, extra) from a save_exported folder; needs no DeepSpeed."""
    from transformers import AutoTokenizer

    with open(os.path.join(export_dir, MODEL_CONFIG)) as f:
        raw = json.load(f)
    extra = raw.pop("pixparse")
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(export_dir, TOKENIZER_DIR), local_files_only=True)
    model = create_model(
        ModelConfig.from_dict(raw), vocab_size=extra["vocab_size"],
        pad_token_id=extra["pad_token_id"], eos_token_id=extra["eos_token_id"],
    )
    load_model(model, os.path.join(export_dir, WEIGHTS), strict=True)
    return model.to(dtype).eval(), tokenizer, extra


def to_hf_vision_encoder_decoder(model: Cruller, decoder_start_token_id: int) -> Any:
    """The same network as a transformers VisionEncoderDecoderModel (TimmWrapper encoder +
    BartForCausalLM decoder), weights copied; logits match Cruller's for the same inputs.

    Preprocessing is not part of it: feed pixels normalized as pixparse does.
    """
    from transformers import TimmWrapperConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    enc_cfg = model.cfg.image_encoder
    trunk = model.image_encoder.trunk
    timm_cfg = TimmWrapperConfig(
        architecture=enc_cfg.name,
        # num_classes stays out: TimmWrapper sets it from its own config (0 with no labels)
        model_args={**enc_cfg.model_args, "img_size": list(enc_cfg.image_size),
                    "in_chans": enc_cfg.in_chans, "global_pool": ""},
        do_pooling=False,
    )
    timm_cfg.hidden_size = trunk.num_features
    dec_cfg = model.text_decoder.model.config
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(timm_cfg, dec_cfg)
    config.pad_token_id = dec_cfg.pad_token_id
    config.eos_token_id = dec_cfg.eos_token_id
    config.decoder_start_token_id = decoder_start_token_id
    config.tie_word_embeddings = False  # the decoder ties its own head; nothing ties across towers
    with torch.device("meta"):
        hf = VisionEncoderDecoderModel(config=config)
    state: dict[str, torch.Tensor] = {}
    for k, v in trunk.state_dict().items():
        state[f"encoder.timm_model.{k}"] = v
    for k, v in model.text_decoder.model.state_dict().items():
        state[f"decoder.{k}"] = v
    if isinstance(model.enc_to_dec_proj, torch.nn.Linear):
        for k, v in model.enc_to_dec_proj.state_dict().items():
            state[f"enc_to_dec_proj.{k}"] = v
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
    # The tied LM head arrives through the embedding; anything else missing is a mapping bug.
    missing = [k for k in missing if k != "decoder.lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"HF export key mismatch: missing {missing}, unexpected {unexpected}")
    hf.decoder.tie_weights()
    return hf.eval()
