"""One factory for every model family (ModelConfig.type)."""
from torch import nn

from pixparse.models.config import ModelConfig
from pixparse.models.cruller import Cruller
from pixparse.models.pali import Pali
from pixparse.models.pix2struct import Pix2Struct

MODEL_FAMILIES: dict[str, type[nn.Module]] = {"cruller": Cruller, "pix2struct": Pix2Struct, "pali": Pali}


def create_model(
    cfg: ModelConfig,
    vocab_size: int,
    pad_token_id: int,
    eos_token_id: int,
    pretrained: bool = False,
    num_classes: int = 0,
) -> nn.Module:
    if cfg.type not in MODEL_FAMILIES:
        raise ValueError(f"model type {cfg.type!r} is not supported; choose one of {sorted(MODEL_FAMILIES)}")
    if num_classes and cfg.type != "cruller":
        raise ValueError(f"a linear classifier head (the xent task) exists for cruller presets only, not {cfg.type!r}")
    family = MODEL_FAMILIES[cfg.type]
    extra = {"num_classes": num_classes} if cfg.type == "cruller" else {}
    return family(cfg, vocab_size, pad_token_id, eos_token_id, pretrained=pretrained, **extra)
