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


# Linear layers of a transformers decoder layer that read the encoder's memory (n tokens), not the text.
_MEMORY_LINEARS = ("encoder_attn.k_proj", "encoder_attn.v_proj", "EncDecAttention.k", "EncDecAttention.v")


def _layer_flops(layer: nn.Module, t: int, n: int = 0) -> int:
    """Forward FLOPs of one BART or T5 layer (encoder or decoder) on t tokens, cross-attending to n
    memory tokens: every Linear at 2*in*out per token it sees, plus the attention products
    (QK^T and AV) at the query projection's width."""
    total = 0
    for name, m in layer.named_modules():
        if isinstance(m, nn.Linear):
            tokens = n if name.endswith(_MEMORY_LINEARS) else t
            total += 2 * tokens * m.in_features * m.out_features
        if name.endswith(("self_attn.q_proj", "SelfAttention.q")):
            total += 2 * 2 * t * t * m.out_features
        elif name.endswith(("encoder_attn.q_proj", "EncDecAttention.q")):
            total += 2 * 2 * t * n * m.out_features
    return total


def _decoder_stack(hf_model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(encoder layers, decoder layers) of a BartForCausalLM / BartForConditionalGeneration / T5."""
    inner = hf_model.model if hasattr(hf_model, "model") else hf_model
    if hasattr(inner, "decoder") and hasattr(inner.decoder, "layers"):  # BART
        enc = list(inner.encoder.layers) if hasattr(inner, "encoder") else []
        return enc, list(inner.decoder.layers)
    return list(hf_model.encoder.block), list(hf_model.decoder.block)  # T5


def _head_flops(hf_model: nn.Module, t: int) -> int:
    head = hf_model.get_output_embeddings()
    return 2 * t * head.in_features * head.out_features


def pix2struct_flops(model: nn.Module, num_rows: int, row_len: int, num_samples: int,
                     text_len: int) -> tuple[int, int]:
    """(forward FLOPs, training-step FLOPs) of one packed batch: num_rows rows of row_len patch
    slots (the attention is computed over the whole row, masked), num_samples decoders of text_len
    tokens, each cross-attending to its row (row_len keys, masked to its page)."""
    enc = model.image_encoder
    d = enc.num_features
    if enc.stem is None:
        embed = no_input_grad = 2 * num_rows * row_len * enc.patch_embed.in_features * d
    else:  # counted per patch slot: exact where pages fill their rows (lines: a page per row)
        per_patch, first = enc.stem.flops_per_patch()
        embed, no_input_grad = num_rows * row_len * per_patch, num_rows * row_len * first
    blocks = 0
    for block in enc.blocks:
        hidden = block.mlp.fc1.out_features
        blocks += 2 * row_len * d * 3 * d + 2 * 2 * row_len * row_len * d + 2 * row_len * d * d
        blocks += 2 * 2 * row_len * d * hidden
    proj = 2 * num_rows * row_len * d * model.text_decoder.hidden_size \
        if isinstance(model.enc_to_dec_proj, nn.Linear) else 0
    hf = model.text_decoder.model
    _, layers = _decoder_stack(hf)
    dec = sum(_layer_flops(layer, text_len, row_len) for layer in layers) + _head_flops(hf, text_len)
    fwd = embed + num_rows * blocks + proj + num_samples * dec
    return fwd, 3 * fwd - no_input_grad


def pali_flops(model: nn.Module, text_len: int, prompt_len: int) -> tuple[int, int]:
    """(forward FLOPs per sample, training-step FLOPs per sample): the ViT, the projection, the
    text encoder over image tokens + prompt_len prompt tokens, the decoder over text_len tokens."""
    vit_fwd, embed = _vit_forward_flops(model.image_encoder.trunk)
    n_img = model.image_encoder.trunk.patch_embed.num_patches + model.image_encoder.trunk.num_prefix_tokens
    proj = 2 * n_img * model.enc_to_dec_proj.in_features * model.enc_to_dec_proj.out_features
    s = n_img + prompt_len
    hf = model.text_decoder.model
    enc_layers, dec_layers = _decoder_stack(hf)
    text_enc = sum(_layer_flops(layer, s) for layer in enc_layers)
    dec = sum(_layer_flops(layer, text_len, s) for layer in dec_layers) + _head_flops(hf, text_len)
    fwd = vit_fwd + proj + text_enc + dec
    return fwd, 3 * fwd - embed
