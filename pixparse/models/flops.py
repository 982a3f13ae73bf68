"""Model FLOPs of Cruller by formula (matmuls only: 2 FLOPs per multiply-add).

Counted like torch.utils.flop_counter: every matmul, conv and attention product, with
attention at full T x T (a causal mask saves no work in the kernels that count). Norms,
softmax, activations and embedding lookups are left out, as they are there.
"""
from torch import nn

from pixparse.models.cruller import Cruller


def _vit_forward_flops(trunk: nn.Module) -> tuple[int, int]:
    """(forward FLOPs of one image, FLOPs of the patch embedding) for a timm VisionTransformer."""
    if not hasattr(trunk, "blocks") or not hasattr(trunk, "patch_embed"):
        raise NotImplementedError(f"no FLOP formula for {type(trunk).__name__}")
    patches = trunk.patch_embed.num_patches
    n = patches + trunk.num_prefix_tokens
    d = trunk.embed_dim
    ph, pw = trunk.patch_embed.patch_size
    in_chans = trunk.patch_embed.proj.in_channels
    embed = 2 * patches * in_chans * ph * pw * d
    total = embed
    for block in trunk.blocks:
        hidden = block.mlp.fc1.out_features
        total += 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d  # qkv, QK^T and AV, proj
        total += 2 * 2 * n * d * hidden  # fc1 + fc2
    return total, embed


def cruller_flops(model: Cruller, text_len: int) -> tuple[int, int]:
    """(forward FLOPs per sample, FLOPs per sample of one training step = fwd + bwd).

    Backward costs two forwards (input and weight gradients), except the patch embedding,
    whose input (the image) needs no gradient: it costs one.
    """
    enc_fwd, embed = _vit_forward_flops(model.image_encoder.trunk)
    n = model.image_encoder.trunk.patch_embed.num_patches + model.image_encoder.trunk.num_prefix_tokens
    d_enc = model.image_encoder.num_features
    cfg = model.text_decoder.model.config
    d, t, vocab = cfg.d_model, text_len, cfg.vocab_size
    proj = 2 * n * d_enc * d if isinstance(model.enc_to_dec_proj, nn.Linear) else 0
    dec = 0
    for layer in model.text_decoder.model.model.decoder.layers:
        ffn = layer.fc1.out_features
        dec += 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d  # self-attention
        dec += 2 * t * d * d + 2 * n * d * 2 * d + 2 * 2 * t * n * d + 2 * t * d * d  # cross-attention
        dec += 2 * 2 * t * d * ffn
    head = 2 * t * d * vocab
    fwd = enc_fwd + proj + dec + head
    return fwd, 3 * fwd - embed


def classifier_flops(model: Cruller) -> tuple[int, int]:
    """(forward, training-step FLOPs per sample) of the image encoder + linear classifier only
    (the xent task: the decoder is not run)."""
    enc_fwd, embed = _vit_forward_flops(model.image_encoder.trunk)
    fwd = enc_fwd + 2 * model.classifier.in_features * model.classifier.out_features
    return fwd, 3 * fwd - embed
