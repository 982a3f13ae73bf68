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
        num_classes: int = 0,
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
        # A linear classifier on the mean-pooled encoder tokens (the xent task); absent otherwise.
        self.num_classes = num_classes
        self.classifier = nn.Linear(enc_dim, num_classes) if num_classes else None

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, None]:
        # (B, C, H, W) -> (B, N_img, C_dec) memory; every token is real (no mask)
        return self.enc_to_dec_proj(self.image_encoder(image)), None

    def classify(self, image: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> class logits (B, num_classes), from the encoder's tokens, mean-pooled
        if self.classifier is None:
            raise ValueError("this model has no classifier (built with num_classes=0)")
        return self.classifier(self.image_encoder(image).mean(dim=1))

    def forward(
        self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        # image (B, C, H, W), input_ids (B, T_txt) -> logits (B, T_txt, V)
        return self.text_decoder(input_ids, attention_mask, self.encode(image)[0])

