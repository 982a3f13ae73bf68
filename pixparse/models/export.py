"""Plain-weights export and loading (no DeepSpeed), and a Hugging Face
VisionEncoderDecoderModel folder so `generate()` works in transformers directly."""
import hashlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from pixparse.models.config import ModelConfig
from pixparse.models.build import create_model
from pixparse.models.cruller import Cruller
from pixparse.models.safe_load import (CheckpointFileError, check_checkpoint_files, inside, no_glob_chars,
                                       plain_name, restricted_torch_load, safe_torch_load)

logger = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CHECKSUMS = "checksums.json"  # sha256 of every file export writes beside it, checked on load
CHECKPOINT_ASSETS = "assets"  # what a checkpoint tag carries for export (see engine.checkpoint)
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
    with open(os.path.join(out_dir, CHECKSUMS), "w") as f:
        json.dump({WEIGHTS: _sha256(os.path.join(out_dir, WEIGHTS)),
                   MODEL_CONFIG: _sha256(os.path.join(out_dir, MODEL_CONFIG))}, f, indent=2)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_export(export_dir: str) -> None:
    """Check the files of an export against the checksums written with it (exports made before
    checksums existed are accepted as they are)."""
    path = os.path.join(export_dir, CHECKSUMS)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        expected = json.load(f)
    for name, digest in expected.items():
        if _sha256(os.path.join(export_dir, name)) != digest:
            raise ValueError(f"{os.path.join(export_dir, name)} does not match the checksum recorded when it was "
                             f"exported: the file is damaged or was changed. Export the checkpoint again.")


def checkpoint_state_dict(tag_dir: str) -> dict[str, torch.Tensor]:
    """fp32 weights of the module a DeepSpeed checkpoint tag holds, keys as in that module.

    ZeRO-2/3: the fp32 master copy, gathered from every rank's optimizer partition by
    DeepSpeed's zero_to_fp32. ZeRO-0/1 shard nothing of the weights: read the module states
    (in the precision they were trained in) and upcast.
    """
    tag_dir = tag_dir.rstrip("/")
    no_glob_chars(tag_dir, "checkpoint")  # zero_to_fp32 globs inside it
    check_checkpoint_files(tag_dir)
    ckpt_dir, tag = os.path.dirname(os.path.abspath(tag_dir)), os.path.basename(tag_dir)
    if any(name.endswith("optim_states.pt") for name in os.listdir(tag_dir)):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            with restricted_torch_load():  # zero_to_fp32 unpickles with weights_only=False
                return dict(get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=tag))
        except CheckpointFileError:
            raise
        except ValueError as e:  # ZeRO-0/1 layouts are not zero_to_fp32 convertible
            logger.warning("%s: no fp32 master weights to consolidate (%s); using the module weights in "
                           "the precision they were trained in", tag_dir, e)
    states = os.path.join(tag_dir, "mp_rank_00_model_states.pt")
    if not os.path.isfile(states):
        raise ValueError(f"{tag_dir} holds no DeepSpeed model states (mp_rank_00_model_states.pt)")
    module = safe_torch_load(states)["module"]
    return {k: v.float() for k, v in module.items()}


def resolve_checkpoint_path(path: str) -> str:
    """A checkpoint folder (holding `latest`, as DeepSpeed's tools take it) -> its latest tag;
    a tag or an export folder as it is."""
    path = path.rstrip("/")
    latest = os.path.join(path, "latest")
    if os.path.isdir(path) and os.path.isfile(latest) and not os.path.isfile(os.path.join(path, WEIGHTS)):
        with open(latest) as f:
            tag = f.read(256).strip()
        plain_name(tag, latest)
        if not os.path.isdir(os.path.join(path, tag)):
            raise ValueError(f"{latest} names {tag!r}, which is not a tag folder beside it")
        return inside(os.path.join(path, tag), path, latest)
    if not os.path.isdir(path):
        raise ValueError(f"checkpoint {path} does not exist")
    return path


def read_info(path: str) -> dict[str, Any]:
    """The 'pixparse' entry (task, preset, tokens, ...) of a resolved export folder or checkpoint
    tag's model_config.json; ValueError when there is none."""
    assets = path if os.path.isfile(os.path.join(path, MODEL_CONFIG)) else os.path.join(path, CHECKPOINT_ASSETS)
    try:
        with open(os.path.join(assets, MODEL_CONFIG)) as f:
            return json.load(f)["pixparse"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a pixparse checkpoint tag or export ({e})") from None


def read_source(path: str) -> tuple[ModelConfig, Any, dict[str, Any], Callable[[], dict[str, torch.Tensor]]]:
    """A previous run's export folder or checkpoint tag -> (preset, tokenizer, info, weights()).

    weights() returns the Cruller state dict (tied LM head included) when called.
    """
    from transformers import AutoTokenizer

    path = resolve_checkpoint_path(path)
    if os.path.isfile(os.path.join(path, WEIGHTS)):  # an export
        verify_export(path)
        assets = path

        def weights() -> dict[str, torch.Tensor]:
            from safetensors.torch import load_file

            return load_file(os.path.join(path, WEIGHTS))
    elif os.path.isdir(os.path.join(path, CHECKPOINT_ASSETS)):  # a checkpoint tag
        assets = os.path.join(path, CHECKPOINT_ASSETS)

        def weights() -> dict[str, torch.Tensor]:
            prefix = "model."  # the task module wraps the model as .model
            return {k[len(prefix):]: v for k, v in checkpoint_state_dict(path).items() if k.startswith(prefix)}
    else:
        raise ValueError(f"{path} is neither a pixparse export ({WEIGHTS}) nor a checkpoint tag "
                         f"({CHECKPOINT_ASSETS}/)")
    with open(os.path.join(assets, MODEL_CONFIG)) as f:
        raw = json.load(f)
    info = raw.pop("pixparse")
    try:
        tokenizer = AutoTokenizer.from_pretrained(os.path.join(assets, TOKENIZER_DIR), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - tokenizers/sentencepiece raise their own types on damaged files
        from pixparse.data.tokenizer import why

        raise ValueError(f"{os.path.join(assets, TOKENIZER_DIR)}: the checkpoint's tokenizer cannot be read "
                         f"({why(e)}); the checkpoint is damaged") from None
    return ModelConfig.from_dict(raw), tokenizer, info, weights


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Strict load; tied weights (LM head, shared embeddings) may be stored under one of their
    names only (safetensors dedup)."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(tensor.data_ptr(), []).append(name)
    weights = dict(weights)
    for names in groups.values():
        present = [n for n in names if n in weights]
        for n in names:
            if n not in weights and present:
                weights[n] = weights[present[0]]
    model.load_state_dict(weights, strict=True)


def model_from_info(model_cfg: ModelConfig, info: dict[str, Any]) -> Cruller:
    """An empty model shaped as the exported or checkpointed one (vocabulary, classifier)."""
    return create_model(model_cfg, info["vocab_size"], info["pad_token_id"], info["eos_token_id"],
                        num_classes=info.get("num_classes", 0))


def load_exported(export_dir: str, dtype: torch.dtype = torch.float32) -> tuple[Cruller, Any, dict[str, Any]]:
    """(model, tokenizer, extra) from a save_exported folder; needs no DeepSpeed."""
    model_cfg, tokenizer, info, _ = read_source(export_dir)
    model = model_from_info(model_cfg, info)
    load_model(model, os.path.join(export_dir, WEIGHTS), strict=True)
    return model.to(dtype).eval(), tokenizer, info


def hf_unsupported(model: nn.Module) -> str | None:
    """Why `model` has no VisionEncoderDecoderModel form (None: it has one)."""
    if model.cfg.type == "pix2struct":
        return ("transformers has no model for packed variable-resolution patches with a BART decoder "
                "(its Pix2Struct pads each page and has a T5-style decoder of its own)")
    if model.cfg.type == "pali":
        return "transformers has no model that feeds image tokens into a BART/T5 text encoder"
    if model.classifier is not None:
        return "it is a classifier: a VisionEncoderDecoderModel has no place for its head"
    if not hasattr(model.image_encoder.trunk, "patch_embed"):
        return (f"its {model.cfg.image_encoder.name} trunk gives a (B, C, h, w) feature map, which "
                f"VisionEncoderDecoderModel passes to its projection unflattened")
    return None


def to_hf_vision_encoder_decoder(model: Cruller, decoder_start_token_id: int) -> Any:
    """The same network as a transformers VisionEncoderDecoderModel (TimmWrapper encoder +
    BartForCausalLM decoder), weights copied; logits match Cruller's for the same inputs.

    Preprocessing is not part of it: feed pixels normalized as pixparse does.
    """
    from transformers import TimmWrapperConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    reason = hf_unsupported(model)
    if reason:
        raise ValueError(f"no Hugging Face export: {reason}; export with --hf false (model.safetensors loads "
                         f"with pixparse.models.export.load_exported)")
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


def save_hf_folder(model: Cruller, tokenizer: Any, info: dict[str, Any], out_dir: str) -> None:
    """A complete transformers folder: the VisionEncoderDecoderModel, the tokenizer, a generation
    config with the trained target length and the task's start token, and an image processor and
    processor that reproduce pixparse's preprocessing (code shipped in the folder:
    `AutoProcessor.from_pretrained(out_dir, trust_remote_code=True)`; it never imports pixparse)."""
    from transformers import GenerationConfig

    from pixparse.models.hf_code.image_processing_pixparse import PixparseImageProcessor
    from pixparse.models.hf_code.processing_pixparse import PixparseProcessor

    hf_model = to_hf_vision_encoder_decoder(model, info["decoder_start_token_id"])
    # greedy, up to the length the model trained with (prompt included), no decoder defaults
    # (BART's forced eos and the like): what pixparse's own generate does
    hf_model.generation_config = GenerationConfig(
        max_length=info["max_length"], decoder_start_token_id=info["decoder_start_token_id"],
        eos_token_id=info["eos_token_id"], pad_token_id=info["pad_token_id"], num_beams=1, do_sample=False)
    hf_model.save_pretrained(out_dir)
    h, w = model.cfg.image_encoder.image_size
    scale = 255.0  # pixparse keeps mean/std in the 0..255 scale; transformers in 0..1
    image_processor = PixparseImageProcessor(
        size={"height": h, "width": w}, image_mode=model.cfg.image_encoder.image_fmt,
        image_mean=[m / scale for m in info["pixel_mean"]], image_std=[s / scale for s in info["pixel_std"]])
    PixparseImageProcessor.register_for_auto_class("AutoImageProcessor")
    PixparseProcessor.register_for_auto_class("AutoProcessor")
    PixparseProcessor(image_processor, tokenizer, prompt=info["prompt"]).save_pretrained(out_dir)
