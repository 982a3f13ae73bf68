"""Image encoder: any timm model that returns a token sequence from forward_features."""
import timm
import torch
from torch import nn

from pixparse.models import conv_vit, zero_init  # noqa: F401 - conv_vit registers its timm model
from pixparse.models.config import ImageEncoderConfig


class ImageEncoder(nn.Module):
    """timm trunk with its classifier and pooling removed; returns (B, N_img, C) tokens."""

    def __init__(self, cfg: ImageEncoderConfig, pretrained: bool = False) -> None:
        super().__init__()
        name, kwargs = trunk_source(cfg, pretrained)
        self.trunk = create_trunk(name, cfg, pretrained, **kwargs)
        self.pretrained_cfg: dict = self.trunk.pretrained_cfg  # normalization (mean, std) of its weights
        self.num_features: int = self.trunk.num_features
        self.image_size = cfg.image_size
        check_image_size(self.trunk, cfg)
        # (H, W) -> tokens: a patch grid (ViT) or the last feature map (conv trunks)
        if hasattr(self.trunk, "patch_embed"):
            self.num_tokens: int = self.trunk.patch_embed.num_patches
        else:
            r = self.trunk.feature_info[-1]["reduction"]
            self.num_tokens = -(-cfg.image_size[0] // r) * -(-cfg.image_size[1] // r)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, N_img, C_enc); prefix (class) tokens are kept, as Donut does.
        x = self.trunk.forward_features(image)
        if x.ndim == 4:  # conv trunks give (B, C, h, w)
            x = x.flatten(2).transpose(1, 2)
        return x


def trunk_source(cfg: ImageEncoderConfig, pretrained: bool) -> tuple[str, dict]:
    """(timm name, create_model kwargs) of the preset's trunk: `name.pretrained_tag` from the hub,
    or a local weights file named by pretrained_tag (no hub access)."""
    kwargs = dict(cfg.model_args)
    if pretrained and cfg.pretrained_tag and cfg.pretrained_tag.endswith((".safetensors", ".pth", ".bin")):
        kwargs["pretrained_cfg_overlay"] = dict(file=cfg.pretrained_tag)
        return cfg.name, kwargs
    return (f"{cfg.name}.{cfg.pretrained_tag}" if pretrained and cfg.pretrained_tag else cfg.name), kwargs


def check_image_size(trunk: nn.Module, cfg: ImageEncoderConfig) -> None:
    """A patch trunk silently drops the pixels beyond the last whole patch: refuse such sizes."""
    patch = getattr(getattr(trunk, "patch_embed", None), "patch_size", None)
    if patch is None or cfg.image_size is None:  # conv trunks; variable-size patch encoders
        return
    h, w = cfg.image_size
    if h % patch[0] or w % patch[1]:
        fit = (h // patch[0] * patch[0], w // patch[1] * patch[1])
        raise ValueError(
            f"image_encoder.image_size {list(cfg.image_size)} is not a multiple of {cfg.name}'s patch size "
            f"{list(patch)}: the last {h % patch[0]} rows / {w % patch[1]} columns would be dropped. Use e.g. "
            f"{list(fit)} in the preset"
        )


def validate_encoder_config(cfg: ImageEncoderConfig) -> None:
    """Build the trunk on the meta device (no memory, no weights) to check the preset before any
    process group starts."""
    with torch.device("meta"):
        if cfg.max_patches:
            cfg = one_patch_config(cfg)
        trunk = create_trunk(cfg.name, cfg, False, **cfg.model_args)
    check_image_size(trunk, cfg)


def one_patch_config(cfg: ImageEncoderConfig) -> ImageEncoderConfig:
    """The patch encoder's trunk config: built at one patch's size (any size the patch divides;
    only its blocks, norm and patch weights are kept)."""
    patch = cfg.model_args.get("patch_size", 16)
    return ImageEncoderConfig(name=cfg.name, image_size=(patch, patch), image_fmt=cfg.image_fmt,
                              model_args=cfg.model_args, pretrained_tag=cfg.pretrained_tag)


def create_trunk(name: str, cfg: ImageEncoderConfig, pretrained: bool, **kwargs) -> nn.Module:
    """timm model without classifier or pooling, built for the input size where the family takes
    one (ViTs fix their position grid by it; conv nets take any size and have no such argument)."""
    common = dict(pretrained=pretrained, in_chans=cfg.in_chans, num_classes=0, global_pool="", **kwargs)
    if zero_init.active():  # partitioned as built: timm's init would write into empty shards
        trunk = timm.create_model(name, img_size=cfg.image_size, weight_init="skip", **common)
        zero_init.init_vit_partitioned(trunk)
        return trunk
    try:
        return timm.create_model(name, img_size=cfg.image_size, **common)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
        return timm.create_model(name, **common)
