"""OCR-reading pretraining (Donut's 'read the page' objective): image -> page text."""
import functools
import json
import logging
import os
import random
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixparse.data.config import DataLoaderConfig
from pixparse.data.decode import decode_document_pages
from pixparse.data.tokenizer import add_task_tokens, create_tokenizer
from pixparse.data.transforms import DocAugment, ResizePad, TextTargets, collate_text_image
from pixparse.models import Cruller, create_model, get_model_config
from pixparse.models.config import ModelConfig
from pixparse.models.export import load_weights, read_source
from pixparse.models.flops import cruller_flops
from pixparse.tasks.config import TaskPretrainConfig

logger = logging.getLogger(__name__)

PRETRAIN_PROMPT = "<s_pretrain>"


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token loss: logits (B, T, V) at t predict labels at t+1; -100 is ignored.

    Returns (mean loss over target tokens, number of target tokens).
    """
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
    return loss, (targets != -100).sum()


class _Preprocess:
    """Worker-side: sample -> {'image', 'input_ids', 'prompt_length'} (picklable)."""

    def __init__(self, image_transform: ResizePad, text: TextTargets, page_sampling: str) -> None:
        self.image_transform = image_transform
        self.text = text
        self.page_sampling = page_sampling

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
        pages = decode_document_pages(
            sample, self.page_sampling, rng,
            target_size=(self.image_transform.height, self.image_transform.width),
            grayscale=self.image_transform.image_fmt == "L",
        )
        out = []
        for page in pages:
            ids, prompt_length = self.text(page.text)
            out.append({"image": self.image_transform(page.image, rng), "input_ids": ids,
                        "prompt_length": prompt_length})
        return out


class TaskCrullerPretrain(nn.Module):
    """Owns the model, tokenizer, preprocessing and loss of OCR pretraining."""

    def __init__(self, cfg: TaskPretrainConfig, model_cfg: ModelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.init_from:
            self.model_cfg, self.tokenizer, info, weights = read_source(cfg.init_from)
            self.model: Cruller = create_model(
                self.model_cfg, info["vocab_size"], info["pad_token_id"], info["eos_token_id"]
            )
            load_weights(self.model, weights())
            logger.info("initialized from %s (%s)", cfg.init_from, info.get("task"))
            if add_task_tokens(self.tokenizer, [PRETRAIN_PROMPT]):
                # HF resizing initializes the new rows around the mean of the old embeddings.
                self.model.text_decoder.model.resize_token_embeddings(len(self.tokenizer))
        else:
            self.model_cfg = model_cfg or get_model_config(cfg.model_name)
            self.tokenizer = create_tokenizer(cfg.tokenizer or self.model_cfg.text_decoder.tokenizer)
            add_task_tokens(self.tokenizer, [PRETRAIN_PROMPT])
            self.model = create_model(
                self.model_cfg,
                vocab_size=len(self.tokenizer),
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                pretrained=cfg.pretrained,
            )
        self.max_length = cfg.max_length or self.model_cfg.text_decoder.max_length
        if self.max_length > self.model.text_decoder.max_positions:
            raise ValueError(
                f"--task.max_length={self.max_length} exceeds the decoder's "
                f"{self.model.text_decoder.max_positions} positions"
            )
        self.model.image_encoder.set_grad_checkpointing(cfg.encoder_grad_checkpointing)
        self.model.text_decoder.set_grad_checkpointing(cfg.decoder_grad_checkpointing)
        enc = self.model.image_encoder
        mean, std = enc.trunk.pretrained_cfg.get("mean", (0.5,)), enc.trunk.pretrained_cfg.get("std", (0.5,))
        if self.model_cfg.image_encoder.image_fmt == "L":
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        # (1, C, 1, 1) in the 0..255 pixel scale, so uint8 pixels normalize in one step
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1) * 255, persistent=False)

    def preprocess(self, data_cfg: DataLoaderConfig) -> _Preprocess:
        enc = self.model_cfg.image_encoder
        return _Preprocess(
            ResizePad(enc.image_size, enc.image_fmt,
                      augment=DocAugment() if data_cfg.image_pipeline == "doc_aug" else None),
            TextTargets(self.tokenizer, PRETRAIN_PROMPT, self.max_length),
            data_cfg.page_sampling,
        )

    def collate(self, data_cfg: DataLoaderConfig) -> functools.partial:
        return functools.partial(
            collate_text_image, pad_id=self.tokenizer.pad_token_id,
            pad_to_multiple_of=data_cfg.pad_to_multiple_of,
        )

    def batch_stats(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Work in a (CPU) batch, for throughput: model FLOPs of one training step on it, image
        tokens and real text tokens."""
        size, text_len = batch["input_ids"].shape
        _, train_flops = cruller_flops(self.model, text_len)  # padded length: the kernels do that work
        trunk = self.model.image_encoder.trunk
        return {
            "flops": float(train_flops * size),
            "image_tokens": float(size * trunk.patch_embed.num_patches),
            "text_tokens": float(batch["attention_mask"].sum()),
        }

    def synthetic_batch(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random pixels and full-length random text: the worst case the loader can send."""
        enc = self.model_cfg.image_encoder
        h, w = enc.image_size
        image = torch.randint(0, 256, (batch_size, enc.in_chans, h, w), dtype=torch.uint8, generator=generator)
        ids = torch.randint(0, len(self.tokenizer), (batch_size, self.max_length), generator=generator)
        ids[:, 0] = self.tokenizer.convert_tokens_to_ids(PRETRAIN_PROMPT)
        labels = ids.clone()
        labels[:, 0] = -100
        return {"image": image, "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    def export_info(self) -> dict[str, Any]:
        """What a loader of the exported weights needs besides the preset."""
        tok = self.tokenizer
        return {
            "task": "cruller_pretrain",
            "prompt": PRETRAIN_PROMPT,
            "vocab_size": len(tok),
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
            "decoder_start_token_id": tok.convert_tokens_to_ids(PRETRAIN_PROMPT),
            "max_length": self.max_length,
            "pixel_mean": self.pixel_mean.flatten().tolist(),
            "pixel_std": self.pixel_std.flatten().tolist(),
        }

    def save_assets(self, out_dir: str) -> None:
        """Model preset, tokenizer and task info beside a checkpoint, so it exports on its own."""
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "model_config.json"), "w") as f:
            json.dump({**self.model_cfg.to_dict(), "pixparse": self.export_info()}, f, indent=2)
        self.tokenizer.save_pretrained(os.path.join(out_dir, "tokenizer"))

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        # DeepSpeed casts parameters (not buffers) to bf16/fp16: the encoder's dtype is the compute dtype.
        dtype = next(self.model.image_encoder.parameters()).dtype
        return ((image.float() - self.pixel_mean) / self.pixel_std).to(dtype)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = self.normalize(batch["image"])  # (B, C, H, W)
        logits = self.model(image, batch["input_ids"], batch["attention_mask"])  # (B, T_txt, V)
        loss, num_tokens = token_cross_entropy(logits, batch["labels"])
        return {"loss": loss, "num_target_tokens": num_tokens}
