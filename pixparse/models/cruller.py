"""Cruller: image encoder + text decoder with cross-attention (Donut-style)."""
import torch
from torch import nn

from pixparse.models.config import ModelConfig
from pixparse.models.image_encoder import ImageEncoder
from pixparse.models.text_decoder import TextDecoder


class Cruller(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        vocab_size: int,
        pad_token_id: int,
        eos_token_id: int,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ImageEncoder(cfg.image_encoder, pretrained=pretrained)
        self.text_decoder = TextDecoder(
            cfg.text_decoder, vocab_size, pad_token_id, eos_token_id, pretrained=pretrained
        )
        enc_dim, dec_dim = self.image_encoder.num_features, self.text_decoder.hidden_size
        # Only a real projection when widths differ, so pretrained pairs of equal width are unchanged.
        self.enc_to_dec_proj = nn.Linear(enc_dim, dec_dim) if enc_dim != dec_dim else nn.Identity()

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, N_img, C_dec)
        return self.enc_to_dec_proj(self.image_encoder(image))

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        # image (B, C, H, W), input_ids (B, T_txt) -> logits (B, T_txt, V)
        return self.text_decoder(input_ids, attention_mask, self.encode(image))


def create_model(
    cfg: ModelConfig,
    vocab_size: int,
    pad_token_id: int,
    eos_token_id: int,
    pretrained: bool = False,
) -> Cruller:
    if cfg.type != "cruller":
        raise ValueError(f"model type {cfg.type!r} is not supported (only 'cruller')")
    return Cruller(cfg, vocab_size, pad_token_id, eos_token_id, pretrained=pretrained)
