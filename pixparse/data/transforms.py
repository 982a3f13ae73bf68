"""Image and text preprocessing that runs in loader workers (picklable callables)."""
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image


class ResizePad:
    """Aspect-preserving resize to fit (H, W), pad with white at the bottom/right -> uint8 (C, H, W).

    Pixels stay uint8 until the model (4x less worker->main traffic than float32).
    """

    def __init__(self, image_size: Sequence[int], image_fmt: str = "L") -> None:
        self.height, self.width = int(image_size[0]), int(image_size[1])
        self.image_fmt = image_fmt

    def __call__(self, image: Image.Image) -> torch.Tensor:
        w, h = image.size
        scale = min(self.height / h, self.width / w)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        if image.format == "JPEG" and scale < 0.5:
            # Let libjpeg decode at a reduced DCT scale instead of full size then resize.
            image.draft(self.image_fmt, (new_w, new_h))
        if image.mode != self.image_fmt:
            image = image.convert(self.image_fmt)
        if (new_w, new_h) != image.size:
            image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
        fill = 255 if self.image_fmt == "L" else (255, 255, 255)
        canvas = Image.new(self.image_fmt, (self.width, self.height), fill)
        canvas.paste(image, (0, 0))
        arr = np.asarray(canvas, dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (C, H, W) uint8


class TextTargets:
    """Text -> token ids: [prompt ids] + text ids + [eos], truncated to max_length."""

    def __init__(self, tokenizer: Any, prompt: str, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_ids: list[int] = tokenizer(prompt, add_special_tokens=False).input_ids
        self.eos_id: int = tokenizer.eos_token_id
        self.max_length = max_length
        if len(self.prompt_ids) + 1 >= max_length:
            raise ValueError(f"max_length {max_length} leaves no room after prompt {prompt!r}")

    def __call__(self, text: str) -> tuple[list[int], int]:
        """Returns (ids, prompt_length)."""
        body = self.tokenizer(text, add_special_tokens=False).input_ids
        body = body[: self.max_length - len(self.prompt_ids) - 1]
        return self.prompt_ids + body + [self.eos_id], len(self.prompt_ids)


def collate_text_image(
    samples: list[dict[str, Any]], pad_id: int, pad_to_multiple_of: int = 8
) -> dict[str, torch.Tensor]:
    """Stack images; pad ids to the longest (rounded up to a multiple); labels ignore prompt + pad.

    Returns image (B, C, H, W) uint8, input_ids/attention_mask/labels (B, T_txt).
    """
    longest = max(len(s["input_ids"]) for s in samples)
    length = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    batch = len(samples)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    labels = torch.full((batch, length), -100, dtype=torch.long)
    for i, s in enumerate(samples):
        ids = torch.as_tensor(s["input_ids"], dtype=torch.long)
        n = ids.numel()
        input_ids[i, :n] = ids
        attention_mask[i, :n] = 1
        labels[i, s["prompt_length"]:n] = ids[s["prompt_length"]:]
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
    }
