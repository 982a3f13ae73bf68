"""The model-family interface: what differs between cruller, pix2struct and pali in how a task
feeds them, in one class per family. The task base calls these methods; it never asks which
family it trains.

| family | image | prompt (a question, a text prefix) | encoder input |
|---|---|---|---|
| `cruller` | resized and padded to the preset's size | in the decoder's input | the image |
| `pali` | the same | read by a text encoder after the image tokens | the image, `prompt_ids`/`prompt_mask` |
| `pix2struct` | aspect-preserving patches packed into rows | drawn above the page | packed rows |

A family is picklable (it holds the preset, never the model): the loader workers use its
worker-side half (`image_transform`, `page_inputs`, `prompt_inputs`, `collate`).
"""
import functools
import random
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from pixparse.data.patches import PatchPage, collate_patches, page_image
from pixparse.data.transforms import DocAugment, ResizePad, TextTargets, collate_text_image
from pixparse.models.config import ModelConfig
from pixparse.models.flops import cruller_flops, pali_flops, pix2struct_flops


class Family:
    """A family of fixed-size image models whose decoder is given the whole prompt (cruller)."""

    name: ClassVar[str] = "cruller"
    # TextTargets' decoder_prompt: 'all' (the prompt's text in the decoder) or 'first' (the task token)
    decoder_prompt: ClassVar[str] = "all"

    def __init__(self, model_cfg: ModelConfig, patch_size: int | None = None) -> None:
        self.encoder_cfg = model_cfg.image_encoder
        self.patch_size = patch_size

    # ------------------------------------------------------------ worker side
    def image_transform(self, augment: DocAugment | None, exact: bool,
                        min_patches: int | None = None) -> ResizePad | PatchPage:
        """Page image -> what the model's encoder takes (uint8, before normalization)."""
        return ResizePad(self.encoder_cfg.image_size, self.encoder_cfg.image_fmt, augment=augment, exact=exact)

    def page_inputs(self, transform: Any, image: Image.Image, headers: list[str],
                    rng: random.Random) -> list[dict[str, Any]]:
        """The image entries of each of a page's examples (one per header): the page, transformed
        once and shared."""
        shared = transform(image, rng)
        return [{"image": shared} for _ in headers]

    def prompt_inputs(self, text: TextTargets, header: str) -> dict[str, Any]:
        """Entries for a text encoder that reads the example's header (none here)."""
        return {}

    def collate(self, pad_id: int, pad_to_multiple_of: int, pack: bool = False) -> Callable:
        return functools.partial(collate_text_image, pad_id=pad_id, pad_to_multiple_of=pad_to_multiple_of)

    # ------------------------------------------------------------ model side
    def pixels(self, batch: dict[str, Any], normalize: Callable[[torch.Tensor], torch.Tensor],
               roll: bool = False) -> Any:
        """What the encoder takes, normalized; `roll`: each sample gets the next one's page."""
        return normalize(batch["image"].roll(1, dims=0) if roll else batch["image"])

    def text_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """What the encoder side reads besides the pixels."""
        return {}

    def page_image(self, batch: dict[str, Any], index: int) -> torch.Tensor:
        """Sample `index`'s page as the model saw it, (C, H, W) uint8."""
        return batch["image"][index].clone()

    def work_shape(self, batch: dict[str, Any]) -> tuple[int, ...]:
        """The batch dimensions a step's FLOPs depend on (padded: the kernels do that work)."""
        return tuple(batch["input_ids"].shape)

    def line_tokens(self, batch: dict[str, Any], tokens: torch.Tensor,
                    model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The image encoder's output `tokens` as each sample's line, left to right, for a CTC
        head: ((B, N, C) tokens, (B,) how many are the sample's). Here each sample's own tokens
        after the trunk's prefix (class) tokens, in the encoder's order: a line where the encoder
        lays them out by column, as pixparse_conv_vit does."""
        line = tokens[:, getattr(model.image_encoder.trunk, "num_prefix_tokens", 0):]  # conv trunks: none
        return line, torch.full((line.shape[0],), line.shape[1], dtype=torch.long, device=line.device)

    def image_tokens(self, batch: dict[str, Any], model: nn.Module) -> float:
        """Image tokens the encoder ran on (real ones only where pages are packed)."""
        return float(batch["input_ids"].shape[0] * model.image_encoder.num_tokens)

    def step_flops(self, model: nn.Module, shape: tuple[int, ...]) -> float:
        """Model FLOPs of one training step on a batch of `shape` (NotImplementedError: no formula
        for this trunk)."""
        size, text_len = shape
        return float(cruller_flops(model, text_len)[1] * size)

    def synthetic_inputs(self, batch_size: int, ids: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        """Random pixels for a synthetic batch: the worst case the loader can send."""
        h, w = self.encoder_cfg.image_size
        return {"image": torch.randint(0, 256, (batch_size, self.encoder_cfg.in_chans, h, w), dtype=torch.uint8,
                                       generator=generator)}


class PaliFamily(Family):
    """An image encoder, then a text encoder over the image tokens and the prompt's header; the
    decoder starts from the task token."""

    name = "pali"
    decoder_prompt = "first"

    def prompt_inputs(self, text: TextTargets, header: str) -> dict[str, Any]:
        return {"prompt_ids": text.encoder_ids(header)}

    def text_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"prompt_ids": batch["prompt_ids"], "prompt_mask": batch["prompt_mask"]}

    def work_shape(self, batch: dict[str, Any]) -> tuple[int, ...]:
        return (*batch["input_ids"].shape, batch["prompt_ids"].shape[1])

    def step_flops(self, model: nn.Module, shape: tuple[int, ...]) -> float:
        size, text_len, prompt_len = shape
        return float(pali_flops(model, text_len, prompt_len)[1] * size)

    def synthetic_inputs(self, batch_size: int, ids: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        # no header: an empty prompt
        return {**super().synthetic_inputs(batch_size, ids, generator),
                "prompt_ids": ids[:, :0].clone(), "prompt_mask": torch.ones_like(ids[:, :0])}


class Pix2StructFamily(Family):
    """Pixels only: aspect-preserving patches packed into rows, the header drawn on the page, the
    decoder starts from the task token."""

    name = "pix2struct"
    decoder_prompt = "first"

    def image_transform(self, augment: DocAugment | None, exact: bool,
                        min_patches: int | None = None) -> PatchPage:
        return PatchPage(self.patch_size, self.encoder_cfg.max_patches, self.encoder_cfg.image_fmt,
                         augment=augment, exact=exact, min_patches=min_patches)

    def page_inputs(self, transform: PatchPage, image: Image.Image, headers: list[str],
                    rng: random.Random) -> list[dict[str, Any]]:
        # An example with a header gets its own page with the header drawn; the others share one.
        out, shared = [], None
        for header in headers:
            if header:
                out.append(transform.prepare(image, rng, header=header))
                continue
            if shared is None:
                shared = transform.prepare(image, rng)
            out.append(shared)
        return out

    def collate(self, pad_id: int, pad_to_multiple_of: int, pack: bool = False) -> Callable:
        return functools.partial(collate_patches, pad_id=pad_id, max_patches=self.encoder_cfg.max_patches,
                                 patch_size=self.patch_size, pack=pack, pad_to_multiple_of=pad_to_multiple_of)

    def pixels(self, batch: dict[str, Any], normalize: Callable[[torch.Tensor], torch.Tensor],
               roll: bool = False) -> dict[str, torch.Tensor]:
        # the packed rows and where each sample's page lies; (R, L, C*p*p) normalized per channel
        patches = batch["patches"]
        r, n, _ = patches.shape
        c = self.encoder_cfg.in_chans
        norm = normalize(patches.view(r * n, c, -1, 1)).view(r, n, -1)
        pick = (lambda t: t.roll(1, dims=0)) if roll else (lambda t: t)
        return {"patches": norm, "patch_pos": batch["patch_pos"], "segment": batch["segment"],
                "sample_row": pick(batch["sample_row"]), "sample_segment": pick(batch["sample_segment"])}

    def page_image(self, batch: dict[str, Any], index: int) -> torch.Tensor:
        return page_image(batch, index, self.patch_size)

    def work_shape(self, batch: dict[str, Any]) -> tuple[int, ...]:
        # the packed rows' work: rows, row length, samples, text length
        return (*batch["segment"].shape, *batch["input_ids"].shape)

    def line_tokens(self, batch: dict[str, Any], tokens: torch.Tensor,
                    model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """The packed rows' tokens (R, L, C) -> each sample's patch columns, left to right, each
        the mean of the column's patches: (B, L, C) and the sample's column count (B,). A line's
        page is one or a few patch rows high, so its columns run along the text."""
        rows = tokens[batch["sample_row"]]  # (B, L, C): the row holding each sample's page
        own = (batch["segment"][batch["sample_row"]] == batch["sample_segment"][:, None]).to(rows.dtype)
        col = batch["patch_pos"][batch["sample_row"]][..., 1]  # (B, L)
        sums = torch.zeros_like(rows).scatter_add_(1, col[..., None].expand_as(rows), rows * own[..., None])
        counts = torch.zeros_like(own).scatter_add_(1, col, own)
        lengths = torch.where(own > 0, col + 1, 0).amax(dim=1)
        return sums / counts.clamp(min=1)[..., None], lengths

    def image_tokens(self, batch: dict[str, Any], model: nn.Module) -> float:
        return float((batch["segment"] > 0).sum())

    def step_flops(self, model: nn.Module, shape: tuple[int, ...]) -> float:
        return float(pix2struct_flops(model, *shape)[1])

    def synthetic_inputs(self, batch_size: int, ids: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        # every page a full row of max_patches
        p, n = self.patch_size, self.encoder_cfg.max_patches
        side = int(n ** 0.5)
        return {
            "patches": torch.randint(0, 256, (batch_size, n, self.encoder_cfg.in_chans * p * p), dtype=torch.uint8,
                                     generator=generator),
            "patch_pos": torch.stack([torch.arange(n) // side, torch.arange(n) % side], -1).expand(batch_size, n, 2),
            "segment": torch.ones((batch_size, n), dtype=torch.long),
            "sample_row": torch.arange(batch_size),
            "sample_segment": torch.ones(batch_size, dtype=torch.long),
        }


FAMILIES: dict[str, type[Family]] = {f.name: f for f in (Family, PaliFamily, Pix2StructFamily)}


def get_family(model_cfg: ModelConfig, model: nn.Module) -> Family:
    """The family of a preset's `type`, for `model` (built from it)."""
    if model_cfg.type not in FAMILIES:
        raise ValueError(f"model type {model_cfg.type!r} has no family; known: {sorted(FAMILIES)}")
    return FAMILIES[model_cfg.type](model_cfg, getattr(model.image_encoder, "patch_size", None))
