"""Model configuration (what a preset JSON holds). Imports only the stdlib."""
from dataclasses import asdict, dataclass, field
from typing import Any, Literal


@dataclass(kw_only=True)
class ImageEncoderConfig:
    name: str
    """timm architecture, e.g. 'vit_base_patch16_224'."""
    image_size: tuple[int, int] | None = None
    """Input (height, width) in pixels (fixed-size families: cruller, pali)."""
    max_patches: int | None = None
    """Pixels-only family (pix2struct): the most patches a page is cut into, and the length of a
    packed patch row; the page keeps its aspect ratio and is never enlarged."""
    image_fmt: Literal["L", "RGB"] = "L"
    """Grayscale ('L', one channel) or 'RGB' input."""
    model_args: dict[str, Any] = field(default_factory=dict)
    """Extra timm create_model kwargs (embed_dim, depth, patch_size, ...)."""
    pretrained_tag: str | None = None
    """timm pretrained tag or local weights file used when the task asks for pretrained weights."""
    patch_stem: list[int] | None = None
    """pix2struct: channels of 3x3 stride-2 convs run over each page's pixels in place of the linear
    patch embedding, log2(patch size) of them (8x8 patches: 3), so each patch's token sees the
    strokes across its borders; e.g. [16, 32, 64]."""

    @property
    def in_chans(self) -> int:
        return 1 if self.image_fmt == "L" else 3


@dataclass(kw_only=True)
class TextDecoderConfig:
    name: str
    """Hub name or local folder of the pretrained decoder (used only when pretrained)."""
    arch: Literal["bart", "t5"] = "bart"
    """Decoder family; the architecture below is a transformers config of that family ('t5': pali only)."""
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
    type: Literal["cruller", "pix2struct", "pali"] = "cruller"
    """Model family: 'cruller' = image encoder + text decoder with cross-attention (Donut);
    'pix2struct' = variable-resolution patches (packed, 2D positions) + text decoder, prompts drawn
    on the page; 'pali' = image tokens prefixed to a text encoder-decoder's input."""
    image_encoder: ImageEncoderConfig
    text_decoder: TextDecoderConfig

    def __post_init__(self) -> None:
        enc = self.image_encoder
        if self.type == "pix2struct":
            if not enc.max_patches or enc.max_patches <= 0:
                raise ValueError("a pix2struct preset needs image_encoder.max_patches > 0 (e.g. 2048)")
            patch = enc.model_args.get("patch_size", 16)
            if enc.patch_stem is not None and 2 ** len(enc.patch_stem) != patch:
                raise ValueError(f"image_encoder.patch_stem {enc.patch_stem} has {len(enc.patch_stem)} stride-2 "
                                 f"convs; patches of {patch} px need log2({patch}) of them")
        elif enc.patch_stem is not None:
            raise ValueError(f"image_encoder.patch_stem is for pix2struct's patches, not a {self.type} preset "
                             f"(pixparse_conv_vit has its own stem_channels)")
        elif enc.image_size is None:
            raise ValueError(f"a {self.type} preset needs image_encoder.image_size [height, width]")
        if self.text_decoder.arch == "t5" and self.type != "pali":
            raise ValueError(f"text_decoder.arch 't5' is an encoder-decoder: use it with type 'pali', "
                             f"not {self.type!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        enc = dict(d["image_encoder"])
        if enc.get("image_size") is not None:
            enc["image_size"] = tuple(enc["image_size"])
        return cls(
            type=d.get("type", "cruller"),
            image_encoder=ImageEncoderConfig(**enc),
            text_decoder=TextDecoderConfig(**d["text_decoder"]),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.image_encoder.image_size is not None:
            d["image_encoder"]["image_size"] = list(self.image_encoder.image_size)
        return d
