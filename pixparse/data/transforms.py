"""Image and text preprocessing that runs in loader workers (picklable callables)."""
import functools
import io
import random
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageEnhance, ImageFilter


def as_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> (C, H, W) uint8 view of its pixels (read-only: copy before writing)."""
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    with warnings.catch_warnings():  # torch warns on read-only arrays; nothing here writes to it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr).permute(2, 0, 1)


def resize_bicubic(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """PIL image -> (C, h, w) uint8 at `size` (w, h): antialiased bicubic, torchvision's uint8
    kernel (Pillow's filter, faster than Pillow's own resize; docs/performance.md#loader)."""
    x = as_tensor(image)
    if (x.shape[2], x.shape[1]) == tuple(size):
        return x
    return TF.resize(x, [size[1], size[0]], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)


def to_pil(x: torch.Tensor) -> Image.Image:
    """(C, H, W) uint8 -> PIL ('L' for one channel)."""
    arr = x.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


class DocAugment:
    """Training augmentations of the Donut/Nougat kind, on the page already at encoder size
    (cheap): small rotation and shear, erosion or dilation of strokes, blur, contrast and
    brightness, JPEG re-compression. Each is applied with probability `p`, drawn from the
    sample's own RNG (so a sample's augmentation is reproducible)."""

    def __init__(self, p: float = 0.3, max_rotate_deg: float = 2.0, max_shear: float = 0.05) -> None:
        self.p = p
        self.max_rotate_deg = max_rotate_deg
        self.max_shear = max_shear

    def __call__(self, image: Image.Image, rng: random.Random, fill: Any) -> Image.Image:
        if rng.random() < self.p:
            shear = rng.uniform(-self.max_shear, self.max_shear)
            image = image.transform(image.size, Image.Transform.AFFINE, (1, shear, 0, 0, 1, 0),
                                    resample=Image.Resampling.BILINEAR, fillcolor=fill)
            image = image.rotate(rng.uniform(-self.max_rotate_deg, self.max_rotate_deg),
                                 resample=Image.Resampling.BILINEAR, fillcolor=fill)
        if rng.random() < self.p / 2:  # ink spread or thinning: strong at small sizes, so rarer
            image = image.filter(ImageFilter.MinFilter(3) if rng.random() < 0.5 else ImageFilter.MaxFilter(3))
        if rng.random() < self.p:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
        if rng.random() < self.p:
            image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.6, 1.3))
            image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.85, 1.15))
        if rng.random() < self.p:
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=rng.randint(30, 90))
            image = Image.open(io.BytesIO(buf.getvalue()))
            image.load()
        return image


class ResizePad:
    """Aspect-preserving resize to fit (H, W), pad with white -> uint8 (C, H, W).

    With `augment`, the page is also scaled by 75-100% and placed at a random spot of the
    canvas, then DocAugment runs; without, it sits top-left at full fit (the eval pipeline:
    no randomness). Pixels stay uint8 until the model (4x less worker->main traffic than float32).
    `exact` False lets the decoder draft JPEGs at a reduced DCT scale (`--data.*.decode fast`);
    the resize is the same antialiased bicubic either way.
    """

    def __init__(self, image_size: Sequence[int], image_fmt: str = "L", augment: DocAugment | None = None,
                 exact: bool = False) -> None:
        self.height, self.width = int(image_size[0]), int(image_size[1])
        self.image_fmt = image_fmt
        self.augment = augment
        self.exact = exact

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        w, h = image.size
        scale = min(self.height / h, self.width / w)
        if self.augment is not None and rng is not None:
            scale *= rng.uniform(0.75, 1.0)
        new_w, new_h = min(self.width, max(1, round(w * scale))), min(self.height, max(1, round(h * scale)))
        if image.mode != self.image_fmt:
            image = image.convert(self.image_fmt)
        page = resize_bicubic(image, (new_w, new_h))
        canvas = torch.full((page.shape[0], self.height, self.width), 255, dtype=torch.uint8)
        if self.augment is not None and rng is not None:
            x, y = rng.randint(0, self.width - new_w), rng.randint(0, self.height - new_h)
            canvas[:, y:y + new_h, x:x + new_w] = page
            fill = 255 if self.image_fmt == "L" else (255, 255, 255)
            return as_tensor(self.augment(to_pil(canvas), rng, fill)).clone()
        canvas[:, :new_h, :new_w] = page
        return canvas


class TextTargets:
    """(prompt, target) -> token ids [prompt ids] + target ids + [eos], truncated to max_length.

    The prompt (a task token, maybe a question) is what the decoder is given; the loss is on
    the target and eos only. `decoder_prompt` 'first': the decoder is given only the prompt's
    first token (the task token), the model family shows it the rest another way (drawn on the
    page, or read by a text encoder: `encoder_ids`)."""

    def __init__(self, tokenizer: Any, max_length: int, decoder_prompt: str = "all") -> None:
        self.tokenizer = tokenizer
        self.decoder_prompt = decoder_prompt
        self.eos_id: int = tokenizer.eos_token_id
        self.max_length = max_length
        self._prompt_ids: dict[str, list[int]] = {}

    def prompt_ids(self, prompt: str) -> list[int]:
        """The decoder's part of the prompt's ids (all of them, or its first: the task token)."""
        if prompt not in self._prompt_ids:
            ids = self.tokenizer(prompt[: 64 * self.max_length], add_special_tokens=False).input_ids
            if self.decoder_prompt == "first":
                ids = ids[:1]
            if len(ids) + 1 >= self.max_length:
                raise ValueError(f"max_length {self.max_length} leaves no room after prompt {prompt!r}")
            self._prompt_ids[prompt] = ids
        return self._prompt_ids[prompt]

    def __call__(self, prompt: str, target: str) -> tuple[list[int], int]:
        """Returns (ids, prompt_length)."""
        prompt_ids = self.prompt_ids(prompt)
        body = self.first_ids(target, self.max_length - len(prompt_ids) - 1)
        return prompt_ids + body + [self.eos_id], len(prompt_ids)

    def first_ids(self, text: str, n: int) -> list[int]:
        """The first `n` ids of `text`, tokenizing as little of it as gives them.

        Any tokenizer: at most 64 * max_length characters (no token of a real vocabulary spans
        64; a longer run without a space may be segmented differently from the whole text's, the
        same characters still). A SentencePiece model that splits on whitespace (every common
        one: its pieces never cross a space) first gets a prefix ending with a word that a space
        follows, ~4 characters per needed id, growing 4x until it gives `n` ids: the same ids as
        the whole text's, without tokenizing the rest of a long page."""
        limit = 64 * self.max_length
        cut = 4 * n if self._whitespace_split else limit
        while cut < min(len(text), limit):
            end = text.rfind(" ", 0, cut + 1)
            while end > 0 and text[end - 1].isspace():  # cut before a run of whitespace, after a word
                end = text.rfind(" ", 0, end - 1)
            if end > 0:
                ids = self.tokenizer(text[:end], add_special_tokens=False).input_ids
                if len(ids) >= n:
                    return ids[:n]
            cut *= 4
        return self.tokenizer(text[:limit], add_special_tokens=False).input_ids[:n]

    @functools.cached_property
    def _whitespace_split(self) -> bool:
        """The tokenizer is a SentencePiece model whose pieces never cross whitespace."""
        sp = getattr(self.tokenizer, "sp_model", None)
        if sp is None:
            return False
        try:  # the model's proto needs protobuf (tensorboard's dependency); without it, no prefix cut
            from sentencepiece import sentencepiece_model_pb2
        except ImportError:
            return False
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(sp.serialized_model_proto())
        spec = proto.trainer_spec
        return spec.split_by_whitespace and not spec.treat_whitespace_as_suffix


    def encoder_ids(self, text: str) -> list[int]:
        """Text for a text encoder (may be empty); past max_length tokens, its last max_length
        (a text prefix is continued from its end)."""
        if not text:
            return []
        return self.tokenizer(text[-64 * self.max_length:], add_special_tokens=False).input_ids[-self.max_length:]


def collate_text_image(
    samples: list[dict[str, Any]], pad_id: int, pad_to_multiple_of: int = 8
) -> dict[str, Any]:
    """Stack images; pad ids to the longest (rounded up to a multiple); labels ignore prompt + pad.

    Returns image (B, C, H, W) uint8, input_ids/attention_mask/labels (B, T_txt),
    prompt_length (B,), and `meta` (a list: key, reference) when the samples carry it (eval).
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
    out: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "prompt_length": torch.tensor([s["prompt_length"] for s in samples], dtype=torch.long),
    }
    if "image" in samples[0]:  # fixed-size pages (patch rows are collate_patches' own)
        out["image"] = torch.stack([s["image"] for s in samples])
    if "prompt_ids" in samples[0]:  # a text encoder's input (pali): padded on the right
        longest = max(len(s["prompt_ids"]) for s in samples)
        prompt_ids = torch.full((batch, longest), pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((batch, longest), dtype=torch.long)
        for i, s in enumerate(samples):
            prompt_ids[i, :len(s["prompt_ids"])] = torch.as_tensor(s["prompt_ids"], dtype=torch.long)
            prompt_mask[i, :len(s["prompt_ids"])] = 1
        out["prompt_ids"], out["prompt_mask"] = prompt_ids, prompt_mask
    if "meta" in samples[0]:
        out["meta"] = [s["meta"] for s in samples]
    return out
