"""Text decoder: a transformers causal LM with cross-attention to the image tokens."""
import torch
from torch import nn
from transformers import BartConfig, BartForCausalLM, GenerationConfig

from pixparse.models.config import TextDecoderConfig


class TextDecoder(nn.Module):
    """BART decoder stack + tied LM head, built offline from the preset's config."""

    def __init__(
        self,
        cfg: TextDecoderConfig,
        vocab_size: int,
        pad_token_id: int,
        eos_token_id: int,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if cfg.arch != "bart":
            raise ValueError(f"text_decoder.arch {cfg.arch!r} is not supported (only 'bart')")
        if pretrained:
            model = BartForCausalLM.from_pretrained(cfg.name, add_cross_attention=True)
        else:
            hf_cfg = BartConfig(**cfg.config)
            hf_cfg.is_decoder = True
            hf_cfg.is_encoder_decoder = False
            hf_cfg.add_cross_attention = True
            hf_cfg.tie_word_embeddings = True
            model = BartForCausalLM(hf_cfg)
        if cfg.num_decoder_layers is not None:
            layers = model.model.decoder.layers
            if cfg.num_decoder_layers > len(layers):
                raise ValueError(
                    f"text_decoder.num_decoder_layers={cfg.num_decoder_layers} exceeds the "
                    f"{len(layers)} layers of {cfg.name}"
                )
            model.model.decoder.layers = layers[: cfg.num_decoder_layers]
            model.config.decoder_layers = cfg.num_decoder_layers
        if model.config.vocab_size != vocab_size:
            model.resize_token_embeddings(vocab_size)
        model.config.pad_token_id = pad_token_id
        model.config.eos_token_id = eos_token_id
        # BART's defaults (forced_eos_token_id=2, bos 0, eos 2, pad 1) name ids of BART's own
        # vocabulary; generation must use this tokenizer's and force nothing.
        model.config.forced_eos_token_id = None
        model.generation_config = GenerationConfig(eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                                   use_cache=True)
        self.model = model
        self.hidden_size: int = model.config.d_model
        self.max_positions: int = model.config.max_position_embeddings

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            self.model.gradient_checkpointing_enable({"use_reentrant": False})
        elif self.model.is_gradient_checkpointing:
            self.model.gradient_checkpointing_disable()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
    ) -> torch.Tensor:
        # (B, T_txt) ids, (B, N_img, C_dec) image tokens -> (B, T_txt, V) logits
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            use_cache=False,
        )
        return out.logits
