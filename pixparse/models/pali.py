"""PaLI-style: image tokens (encoder output, projected) prefixed to a text encoder-decoder's
input; the text encoder reads them with the prompt, the decoder writes the target."""
import torch
from torch import nn

from pixparse.models.config import ModelConfig
from pixparse.models.image_encoder import ImageEncoder
from pixparse.models.text_decoder import TextEncoderDecoder


class Pali(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_token_id: int, eos_token_id: int,
                 pretrained: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = ImageEncoder(cfg.image_encoder, pretrained=pretrained)
        self.text_decoder = TextEncoderDecoder(cfg.text_decoder, vocab_size, pad_token_id, eos_token_id,
                                               pretrained=pretrained)
        # always a projection: image features enter the text encoder's embedding space
        self.enc_to_dec_proj = nn.Linear(self.image_encoder.num_features, self.text_decoder.hidden_size)
        self.classifier = None

    def encode(self, image: torch.Tensor, prompt_ids: torch.Tensor,
               prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # image (B, C, H, W), prompt (B, T_p) -> text-encoder states (B, N_img + T_p, C_dec) and mask
        image_tokens = self.enc_to_dec_proj(self.image_encoder(image))
        return self.text_decoder.encode(image_tokens, prompt_ids, prompt_mask)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        # decoder ids (B, T_txt) -> logits (B, T_txt, V)
        memory, memory_mask = self.encode(image, prompt_ids, prompt_mask)
        return self.text_decoder(input_ids, attention_mask, memory, memory_mask)
