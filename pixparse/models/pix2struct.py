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


class PageConvStem(nn.Module):
    """Packed patches (R, L, C*p*p) -> (R, L, D) tokens by convolution over each page's pixels.

    Each page's patches are put back on a canvas (one per page, the batch's largest patch grid),
    3x3 stride-2 convs bring every p x p patch to one vector that also sees its neighbours'
    pixels (15 px for p = 8), and the vectors go back to the packed slots. Padding slots get zeros.
    """

    def __init__(self, in_chans: int, patch_size: int, channels: list[int], dim: int) -> None:
        super().__init__()
        layers, cin = [], in_chans
        for i, ch in enumerate(channels):
            layers += ([nn.GELU()] if i else []) + [nn.Conv2d(cin, ch, 3, stride=2, padding=1)]
            cin = ch
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Linear(cin, dim)
        self.in_chans, self.patch_size = in_chans, patch_size

    def forward(self, patches: torch.Tensor, patch_pos: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
        r, n, _ = patches.shape
        c, p = self.in_chans, self.patch_size
        real = segment > 0
        # a page is a (row, segment) pair: number them 0..P-1
        key = (torch.arange(r, device=segment.device)[:, None] * (int(segment.max()) + 1) + segment)[real]
        _, page = torch.unique(key, return_inverse=True)
        rows, cols = patch_pos[..., 0][real], patch_pos[..., 1][real]
        num_pages, h, w = int(page.max()) + 1, int(rows.max()) + 1, int(cols.max()) + 1
        canvas = patches.new_zeros(num_pages, h, w, c, p, p)
        canvas[page, rows, cols] = patches[real].view(-1, c, p, p)
        canvas = canvas.permute(0, 3, 1, 4, 2, 5).reshape(num_pages, c, h * p, w * p)
        feats = self.convs(canvas).permute(0, 2, 3, 1)  # (P, h, w, C_last): one vector per patch
        out = patches.new_zeros(r, n, self.proj.out_features)
        out[real] = self.proj(nn.functional.gelu(feats[page, rows, cols]))
        return out

    def flops_per_patch(self) -> tuple[int, int]:
        """(forward FLOPs of one patch slot, those of the first conv: no input gradient)."""
        side, per_conv = self.patch_size, []
        for conv in (m for m in self.convs if isinstance(m, nn.Conv2d)):
            side //= 2  # each conv halves the patch's side
            per_conv.append(2 * conv.in_channels * conv.out_channels * 9 * side * side)
        return sum(per_conv) + 2 * self.proj.in_features * self.proj.out_features, per_conv[0]


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
        # a conv stem over each page (patch_stem), or the linear patch embedding
        self.stem: PageConvStem | None = None
        self.patch_embed: nn.Linear | None = None
        if cfg.patch_stem:
            self.stem = PageConvStem(conv.in_channels, self.patch_size, cfg.patch_stem, self.num_features)
        else:
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
        embed = self.patch_embed(patches) if self.stem is None else self.stem(patches, patch_pos, segment)
        x = embed + self.row_embed(patch_pos[..., 0]) + self.col_embed(patch_pos[..., 1])
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
