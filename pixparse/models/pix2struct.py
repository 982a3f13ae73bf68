"""Pixels-only model with variable-resolution patches (Pix2Struct), packed rows (NaViT).

The encoder takes rows of patches from pixparse.data.patches.collate_patches: a linear patch
embedding, learned row and column embeddings (Pix2Struct's 2D absolute positions) and timm ViT
blocks whose attention is masked block-diagonally, so a patch sees only the patches of its own
page. The decoder (the Cruller one) cross-attends, per sample, to its page's patches only.
"""
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from pixparse.models import zero_init
from pixparse.models.config import ImageEncoderConfig, ModelConfig
from pixparse.models.image_encoder import create_trunk, one_patch_config, trunk_source
from pixparse.models.text_decoder import TextDecoder


class PatchEncoder(nn.Module):
    """(R, L, C*p*p) patch rows + (R, L, 2) positions + (R, L) segments -> (R, L, D) tokens.

    The transformer blocks and final norm are a timm ViT's (`name` + `model_args`), so a
    pretrained ViT loads by name (`pretrained_tag`); its conv patch embedding becomes the linear one
    (same weights: patches are flattened in the conv weight's (C, p, p) order); its fixed position
    grid is dropped for row/column tables of max_patches entries each.
    """

    def __init__(self, cfg: ImageEncoderConfig, pretrained: bool = False) -> None:
        super().__init__()
        assert cfg.max_patches, "pix2struct encoders need max_patches"
        name, kwargs = trunk_source(cfg, pretrained)
        trunk = create_trunk(name, one_patch_config(cfg), pretrained, **kwargs)
        self.pretrained_cfg: dict = trunk.pretrained_cfg  # normalization (mean, std) of its weights
        conv = trunk.patch_embed.proj
        self.patch_size: int = conv.kernel_size[0]
        self.num_features: int = trunk.num_features
        self.max_patches: int = cfg.max_patches
        self.num_tokens: int = cfg.max_patches  # per row; the real count is in each batch
        self.patch_embed = nn.Linear(conv.in_channels * self.patch_size ** 2, self.num_features)
        if not zero_init.active():
            with torch.no_grad():
                self.patch_embed.weight.copy_(conv.weight.flatten(1))
                self.patch_embed.bias.copy_(conv.bias)
        # (partitioned: the linear's own init is the conv's, both kaiming-uniform over C*p*p inputs)
        self.row_embed = nn.Embedding(cfg.max_patches, self.num_features)
        self.col_embed = nn.Embedding(cfg.max_patches, self.num_features)
        zero_init.normal_partitioned([self.row_embed.weight, self.col_embed.weight], std=0.02)
        self.blocks = trunk.blocks
        self.norm = trunk.norm
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, patches: torch.Tensor, patch_pos: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        # patches (R, L, C*p*p) normalized, patch_pos (R, L, 2), segment (R, L) -> (R, L, D)
        x = self.patch_embed(patches) + self.row_embed(patch_pos[..., 0]) + self.col_embed(patch_pos[..., 1])
        # block-diagonal: a token attends to tokens of its own segment (padding only to padding)
        mask = (segment[:, :, None] == segment[:, None, :]).unsqueeze(1)  # (R, 1, L, L) bool
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=mask)
        return self.norm(x)


class Pix2Struct(nn.Module):
    """Packed variable-resolution patch encoder + text decoder with cross-attention."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_token_id: int, eos_token_id: int,
                 pretrained: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = PatchEncoder(cfg.image_encoder, pretrained=pretrained)
        self.text_decoder = TextDecoder(cfg.text_decoder, vocab_size, pad_token_id, eos_token_id, pretrained=pretrained)
        enc_dim, dec_dim = self.image_encoder.num_features, self.text_decoder.hidden_size
        self.enc_to_dec_proj = nn.Linear(enc_dim, dec_dim) if enc_dim != dec_dim else nn.Identity()
        self.classifier = None

    def encode(self, pixels: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed rows -> each sample's memory (B, L, C_dec) and its mask (B, L): the row holding
        its page, with only that page's patches visible."""
        rows = self.enc_to_dec_proj(self.image_encoder(pixels["patches"], pixels["patch_pos"], pixels["segment"]))
        memory = rows[pixels["sample_row"]]  # (B, L, C_dec)
        mask = pixels["segment"][pixels["sample_row"]] == pixels["sample_segment"][:, None]  # (B, L)
        return memory, mask.long()

    def forward(self, pixels: dict[str, torch.Tensor], input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        # input_ids (B, T_txt) -> logits (B, T_txt, V)
        memory, memory_mask = self.encode(pixels)
        return self.text_decoder(input_ids, attention_mask, memory, memory_mask)
