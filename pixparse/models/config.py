"""Model configuration (what a preset JSON holds). Imports only the stdlib."""
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(kw_only=True)
class ImageEncoderConfig:
    name: str
    """timm architecture, e.g. 'vit_base_patch16_224'."""
    image_size: tuple[int, int]
    """Input (height, width) in pixels."""
    image_fmt: Literal["L", "RGB"] = "L"
    """Grayscale ('L', one channel) or 'RGB' input."""
    model_args: dict[str, Any] = field(default_factory=dict)
    """Extra timm create_model kwargs (embed_dim, depth, patch_size, ...)."""
    pretrained_tag: str | None = None
    """timm pretrained tag or local weights file used when the task asks for pretrained weights."""

    @property
    def in_chans(self) -> int:
        return 1 if self.image_fmt == "L" else 3


@dataclass(kw_only=True)
class TextDecoderConfig:
    name: str
    """Hub name or local folder of the pretrained decoder (used only when pretrained)."""
    arch: Literal["bart"] = "bart"
    """Decoder family; the architecture below is a transformers config of that family."""
    config: dict[str, Any]
    """The decoder's transformers config (d_model, layers, heads, ...), so it builds offline."""
    num_decoder_layers: int | None = None
    """Keep only the first N decoder layers (huggingface/pixparse truncates BART)."""
    max_length: int
    """Longest target sequence in tokens."""
    tokenizer: str
    """Default tokenizer spec for this preset (see --task.tokenizer)."""


@dataclass(kw_only=True)
class ModelConfig:
    type: Literal["cruller"] = "cruller"
    """Model family: 'cruller' = image encoder + text decoder with cross-attention."""
    image_encoder: ImageEncoderConfig
    text_decoder: TextDecoderConfig

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        enc = dict(d["image_encoder"])
        enc["image_size"] = tuple(enc["image_size"])
        return cls(
            type=d.get("type", "cruller"),
            image_encoder=ImageEncoderConfig(**enc),
            text_decoder=TextDecoderConfig(**d["text_decoder"]),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_encoder"]["image_size"] = list(self.image_encoder.image_size)
        return d
