"""Image encoder: any timm model that returns a token sequence from forward_features."""
import timm
import torch
from torch import nn

from pixparse.models.config import ImageEncoderConfig


class ImageEncoder(nn.Module):
    """timm trunk with its classifier and pooling removed; returns (B, N_img, C) tokens."""

    def __init__(self, cfg: ImageEncoderConfig, pretrained: bool = False) -> None:
        super().__init__()
        kwargs = dict(cfg.model_args)
        if pretrained and cfg.pretrained_tag and cfg.pretrained_tag.endswith((".safetensors", ".pth", ".bin")):
            # A local weights file: no hub access needed.
            kwargs["pretrained_cfg_overlay"] = dict(file=cfg.pretrained_tag)
            name = cfg.name
        else:
            name = f"{cfg.name}.{cfg.pretrained_tag}" if pretrained and cfg.pretrained_tag else cfg.name
        self.trunk = timm.create_model(
            name,
            pretrained=pretrained,
            img_size=cfg.image_size,
            in_chans=cfg.in_chans,
            num_classes=0,
            global_pool="",
            **kwargs,
        )
        self.num_features: int = self.trunk.num_features
        self.image_size = cfg.image_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, N_img, C_enc); prefix (class) tokens are kept, as Donut does.
        x = self.trunk.forward_features(image)
        if x.ndim == 4:  # conv trunks give (B, C, h, w)
            x = x.flatten(2).transpose(1, 2)
        return x
