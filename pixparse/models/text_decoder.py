"""Text decoder: a transformers causal LM with cross-attention to the image tokens."""
import torch
from torch import nn
from transformers import BartConfig, BartForCausalLM, GenerationConfig

from pixparse.models import zero_init
from pixparse.models.config import TextDecoderConfig


def use_tokenizer(model: nn.Module, vocab_size: int, pad_token_id: int, eos_token_id: int) -> nn.Module:
    """Resize a transformers model to the tokenizer and make its ids the ones generation uses.
    BART's defaults (forced_eos_token_id=2, bos 0, eos 2, pad 1) name ids of BART's own
    vocabulary; generation must use this tokenizer's and force nothing."""
    if model.config.vocab_size != vocab_size:
        model.resize_token_embeddings(vocab_size)
    model.config.pad_token_id = pad_token_id
    model.config.eos_token_id = eos_token_id
    model.config.forced_eos_token_id = None
    model.generation_config = GenerationConfig(eos_token_id=eos_token_id, pad_token_id=pad_token_id, use_cache=True)
    return model


def set_hf_grad_checkpointing(model: nn.Module, enable: bool) -> None:
    """Recompute a transformers model's layers in backward (non-reentrant), or stop doing so."""
    if enable:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    # transformers 5 renamed is_gradient_checkpointing (now a deprecated alias that warns on every run)
    elif (model.is_activation_checkpointing if hasattr(type(model), "is_activation_checkpointing")
          else model.is_gradient_checkpointing):
        model.gradient_checkpointing_disable()


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
            model = zero_init.build_hf(BartForCausalLM, hf_cfg)
        if cfg.num_decoder_layers is not None:
            layers = model.model.decoder.layers
            if cfg.num_decoder_layers > len(layers):
                raise ValueError(
                    f"text_decoder.num_decoder_layers={cfg.num_decoder_layers} exceeds the "
                    f"{len(layers)} layers of {cfg.name}"
                )
            model.model.decoder.layers = layers[: cfg.num_decoder_layers]
            model.config.decoder_layers = cfg.num_decoder_layers
        self.model = use_tokenizer(model, vocab_size, pad_token_id, eos_token_id)
        self.hidden_size: int = model.config.d_model
        self.max_positions: int = model.config.max_position_embeddings

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_hf_grad_checkpointing(self.model, enable)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # (B, T_txt) ids, (B, N_img, C_dec) image tokens (, (B, N_img) which are real) -> (B, T_txt, V) logits
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            use_cache=False,
        )
        return out.logits

    def generate(self, input_ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
                 config: GenerationConfig, synced: bool = False) -> torch.Tensor:
        """Continue `input_ids` (B, T) cross-attending to `memory` (B, N, C); returns (B, T + new).

        Self-attention keys/values are cached and the cross-attention ones computed once (an
        EncoderDecoderCache: transformers' generate would otherwise give a decoder-only cache that
        the cross-attention appends to)."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        extra = {} if memory_mask is None else {"encoder_attention_mask": memory_mask}
        return self.model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), encoder_hidden_states=memory,
            cache=EncoderDecoderCache(DynamicCache(), DynamicCache()), generation_config=config,
            synced_gpus=synced, **extra,
        )


class TextEncoderDecoder(nn.Module):
    """A transformers encoder-decoder (BART or T5) whose encoder reads image tokens followed by the
    prompt's token embeddings (PaLI), built offline from the preset's config."""

    def __init__(self, cfg: TextDecoderConfig, vocab_size: int, pad_token_id: int, eos_token_id: int,
                 pretrained: bool = False) -> None:
        super().__init__()
        from transformers import BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

        cls, config_cls = {"bart": (BartForConditionalGeneration, BartConfig),
                           "t5": (T5ForConditionalGeneration, T5Config)}[cfg.arch]
        if pretrained:
            model = cls.from_pretrained(cfg.name)
        else:
            # built at the tokenizer's size (no resize after: cheaper, and works on the meta device)
            model = zero_init.build_hf(cls, config_cls(**{**cfg.config, "vocab_size": vocab_size},
                                                      tie_word_embeddings=True))
        if cfg.num_decoder_layers is not None:
            raise ValueError("text_decoder.num_decoder_layers applies to decoder-only presets, not to pali")
        self.model = use_tokenizer(model, vocab_size, pad_token_id, eos_token_id)
        self.hidden_size: int = model.config.d_model
        # T5 has relative positions (no table); BART's table bounds both the encoder and decoder
        self.max_positions: int = getattr(model.config, "max_position_embeddings", None) or 1 << 16

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_hf_grad_checkpointing(self.model, enable)

    def encode(self, image_tokens: torch.Tensor, prompt_ids: torch.Tensor,
               prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, N_img, C) image tokens + (B, T_p) prompt -> encoder states (B, N_img + T_p, C) and mask
        text = self.model.get_input_embeddings()(prompt_ids)  # BART scales inside its embedding
        x = torch.cat([image_tokens.to(text.dtype), text], dim=1)
        mask = torch.cat([prompt_mask.new_ones(image_tokens.shape[:2]), prompt_mask], dim=1)
        states = self.model.get_encoder()(inputs_embeds=x, attention_mask=mask).last_hidden_state
        return states, mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # decoder ids (B, T_txt), encoder states (B, S, C) -> (B, T_txt, V) logits
        from transformers.modeling_outputs import BaseModelOutput

        out = self.model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoder_hidden_states),
            attention_mask=encoder_attention_mask,
            decoder_input_ids=input_ids,
            decoder_attention_mask=attention_mask,
            use_cache=False,
        )
        return out.logits

    def generate(self, input_ids: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None,
                 config: GenerationConfig, synced: bool = False) -> torch.Tensor:
        """Continue the decoder ids `input_ids` (B, T) from the encoder states; returns (B, T + new)."""
        import copy

        from transformers.modeling_outputs import BaseModelOutput

        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        config = copy.deepcopy(config)  # generate insists on a start id even when given decoder ids
        config.decoder_start_token_id = int(input_ids[0, 0])
        # Caches that grow per layer as used: the one generate builds from the config sizes itself by
        # the encoder's layer count (T5's num_layers) and fails with more decoder layers than that.
        return self.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=memory), attention_mask=memory_mask,
            decoder_input_ids=input_ids, generation_config=config, synced_gpus=synced,
            cache=EncoderDecoderCache(DynamicCache(), DynamicCache()),
        )
