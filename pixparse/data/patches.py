"""Variable-resolution patches (Pix2Struct) packed into rows (NaViT): worker-side transforms and
collate for the pixels-only model family.

A page is scaled, keeping its aspect ratio, to the largest patch grid of at most `max_patches`
patches that does not enlarge it (enlarging adds compute, not information), then cut into
patches flattened as (C, p, p) (the order of a conv patch embedding's weight). Each patch keeps
its (row, column). Collate packs the pages of a batch into rows of `max_patches` slots (first fit,
longest first), each patch tagged with its page's segment id (1, 2, ... within the row; 0 is
padding), so attention can be kept inside a page; `pack=False` gives one page per row, padded
(Pix2Struct's layout), for comparison.
"""
import math
import random
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pixparse.data.transforms import DocAugment, collate_text_image, resize_bicubic, to_pil


def patch_grid(height: int, width: int, patch_size: int, max_patches: int, upscale: bool = False) -> tuple[int, int]:
    """(rows, cols) of the page's patch grid: Pix2Struct's aspect-preserving fit to max_patches,
    capped at the page's own resolution unless `upscale`."""
    scale = math.sqrt(max_patches * (patch_size / height) * (patch_size / width))
    rows = max(1, min(math.floor(scale * height / patch_size), max_patches))
    cols = max(1, min(math.floor(scale * width / patch_size), max_patches))
    if not upscale:
        rows = min(rows, max(1, math.ceil(height / patch_size)))
        cols = min(cols, max(1, math.ceil(width / patch_size)))
    while rows * cols > max_patches:  # float rounding at the edge of the budget
        if rows >= cols:
            rows -= 1
        else:
            cols -= 1
    return rows, cols


def render_header(image: Image.Image, text: str, min_size: int = 10) -> Image.Image:
    """Pix2Struct's prompt rendering: `text` (a question) drawn in black on white above the page,
    wrapped to the page width, with a font of 1/40 of the page width, or `min_size` px if larger."""
    size = max(min_size, image.width // 40)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(image)
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > image.width - 2 * size:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    height = (len(lines) + 1) * int(size * 1.25)
    fill = 255 if image.mode == "L" else (255, 255, 255)
    header = Image.new(image.mode, (image.width, height), fill)
    hd = ImageDraw.Draw(header)
    for i, t in enumerate(lines):
        hd.text((size, size // 2 + i * int(size * 1.25)), t, fill=0 if image.mode == "L" else (0, 0, 0), font=font)
    out = Image.new(image.mode, (image.width, height + image.height), fill)
    out.paste(header, (0, 0))
    out.paste(image, (0, height))
    return out


class PatchPage:
    """PIL page (+ optional header text) -> patches, in two steps so that collate can set each
    page's final budget: `prepare` (worker, per sample) converts, draws the header, resizes the page
    to its grid at max_patches and augments it, and draws its budget; `patchify` (collate) resizes
    it to the grid of its final budget and cuts the patches. `__call__` does both at the drawn
    budget. With `min_patches`, each page's budget is drawn from [min_patches, max_patches] (the
    sample's RNG; NaViT's resolution sampling); without an RNG (eval) it is max_patches."""

    def __init__(self, patch_size: int, max_patches: int, image_fmt: str = "L", augment: DocAugment | None = None,
                 exact: bool = False, upscale: bool = False, min_patches: int | None = None) -> None:
        self.patch_size = patch_size
        self.max_patches = max_patches
        self.min_patches = min_patches
        self.image_fmt = image_fmt
        self.augment = augment
        self.exact = exact
        self.upscale = upscale
        # The decode hint (JPEG draft, PDF render scale): a square twice the side of a square page
        # of max_patches patches holds the patch grid of any page up to aspect 4:1 at full detail.
        self.height = self.width = 2 * math.ceil(math.sqrt(max_patches)) * patch_size

    def prepare(self, image: Image.Image, rng: random.Random | None = None, header: str = "") -> dict[str, Any]:
        """-> {'page': the page at its max_patches grid (PIL), 'budget': its drawn patch budget}."""
        if image.mode != self.image_fmt:
            image = image.convert(self.image_fmt)
        p = self.patch_size
        if header:
            # A header line at least one patch tall once the page is scaled to its grid (at 192
            # patches a 754 px form shrinks ~10x: 1/40 of its width would draw 2 px letters).
            _, cols = patch_grid(image.height, image.width, p, self.max_patches, self.upscale)
            image = render_header(image, header, min_size=math.ceil(image.width / cols))  # one patch, in page px
        rows, cols = patch_grid(image.height, image.width, p, self.max_patches, self.upscale)
        if (cols * p, rows * p) != image.size:
            image = to_pil(resize_bicubic(image, (cols * p, rows * p)))
        if self.augment is not None and rng is not None:
            image = self.augment(image, rng, 255 if self.image_fmt == "L" else (255, 255, 255))
        budget = self.max_patches
        if self.min_patches is not None and rng is not None:
            budget = rng.randint(self.min_patches, self.max_patches)
        return {"page": image, "budget": budget}

    def __call__(self, image: Image.Image, rng: random.Random | None = None, header: str = "") -> dict[str, torch.Tensor]:
        prepared = self.prepare(image, rng, header)
        return patchify(prepared["page"], prepared["budget"], self.patch_size)


def patchify(page: Image.Image, budget: int, patch_size: int) -> dict[str, torch.Tensor]:
    """A prepared page at the grid of `budget` patches (never above its own size) ->
    {'patches': (N, C*p*p) uint8, 'patch_pos': (N, 2) int16 (row, col)}."""
    p = patch_size
    rows, cols = patch_grid(page.height, page.width, p, budget)
    arr = resize_bicubic(page, (cols * p, rows * p)).permute(1, 2, 0).numpy()
    c = arr.shape[2]
    # (rows*p, cols*p, C) -> (rows, cols, C, p, p) -> (N, C*p*p)
    patches = arr.reshape(rows, p, cols, p, c).transpose(0, 2, 4, 1, 3).reshape(rows * cols, c * p * p)
    r, q = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    pos = np.stack([r.reshape(-1), q.reshape(-1)], axis=1).astype(np.int16)
    return {"patches": torch.from_numpy(np.ascontiguousarray(patches)), "patch_pos": torch.from_numpy(pos)}


def grow_to_fill(sizes: list[tuple[int, int]], budgets: list[int], capacity: int, patch_size: int) -> list[int]:
    """Budgets for the pages of one packed row, each at least its own, grown in proportion so the
    row's patches come as close to `capacity` as the grids allow. `sizes` are the prepared pages'
    (height, width): a page never grows past them (its max_patches grid)."""
    def count(b: list[int]) -> list[int]:
        return [math.prod(patch_grid(h, w, patch_size, n)) for (h, w), n in zip(sizes, b)]

    used = sum(count(budgets))
    if used >= capacity:
        return budgets
    grown = [max(b, math.floor(b * capacity / used)) for b in budgets]
    for _ in range(64):  # grid rounding can overshoot: take the excess back from the most-grown page
        excess = sum(count(grown)) - capacity
        if excess <= 0:
            break
        k = max(range(len(grown)), key=lambda i: grown[i] - budgets[i])
        if grown[k] == budgets[k]:
            return budgets  # the drawn budgets fit (the packing chose them)
        grown[k] = max(budgets[k], grown[k] - excess)
    else:
        return budgets
    # grid rounding left slots free: offer them to each page in turn, largest first (a page takes
    # the largest grid that fits its count plus the free slots)
    counts = count(grown)
    for k in sorted(range(len(grown)), key=lambda i: -counts[i]):
        slack = capacity - sum(counts)
        if slack <= 0:
            break
        grown[k] = max(grown[k], counts[k] + slack)
        counts = count(grown)
    return grown


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing bin packing: indices of `lengths` grouped into rows of at most
    `capacity` (every length must fit a row)."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"a page of {n} patches does not fit a row of {capacity}")
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(capacity - n)
    return rows


def collate_patches(samples: list[dict[str, Any]], pad_id: int, max_patches: int, patch_size: int,
                    pack: bool = True, pad_to_multiple_of: int = 8) -> dict[str, Any]:
    """Text as collate_text_image; prepared pages (PatchPage.prepare) as rows of patches:
    patches (R, L, C*p*p) uint8, patch_pos (R, L, 2) long, segment (R, L) long (0: padding),
    sample_row (B,) and sample_segment (B,): where each sample's page lies. L = max_patches.

    pack: pages packed first-fit (longest first), then each row's pages grown from their drawn
    budgets to fill it (so rows come out nearly full); otherwise one page per row at its budget,
    padded. Examples of one page (several questions) share it when they hold the same object.
    """
    text = collate_text_image(samples, pad_id=pad_id, pad_to_multiple_of=pad_to_multiple_of)
    page_of: list[int] = []
    pages: list[dict[str, Any]] = []
    seen: dict[int, int] = {}
    for s in samples:
        key = id(s["page"])
        if key not in seen:
            seen[key] = len(pages)
            pages.append(s)
        page_of.append(seen[key])
    sizes = [(pg["page"].height, pg["page"].width) for pg in pages]
    budgets = [pg["budget"] for pg in pages]
    lengths = [math.prod(patch_grid(h, w, patch_size, b)) for (h, w), b in zip(sizes, budgets)]
    rows = pack_rows(lengths, max_patches) if pack else [[i] for i in range(len(pages))]
    if pack:
        for members in rows:
            grown = grow_to_fill([sizes[i] for i in members], [budgets[i] for i in members], max_patches, patch_size)
            for i, b in zip(members, grown):
                budgets[i] = b
    cut = [patchify(pg["page"], b, patch_size) for pg, b in zip(pages, budgets)]
    dim = cut[0]["patches"].shape[1]
    patches = torch.zeros((len(rows), max_patches, dim), dtype=torch.uint8)
    pos = torch.zeros((len(rows), max_patches, 2), dtype=torch.long)
    segment = torch.zeros((len(rows), max_patches), dtype=torch.long)
    where = [(0, 0)] * len(pages)
    for r, members in enumerate(rows):
        start = 0
        for k, i in enumerate(members, start=1):
            n = cut[i]["patches"].shape[0]
            patches[r, start:start + n] = cut[i]["patches"]
            pos[r, start:start + n] = cut[i]["patch_pos"].long()
            segment[r, start:start + n] = k
            where[i] = (r, k)
            start += n
    text["patches"] = patches
    text["patch_pos"] = pos
    text["segment"] = segment
    text["sample_row"] = torch.tensor([where[p][0] for p in page_of], dtype=torch.long)
    text["sample_segment"] = torch.tensor([where[p][1] for p in page_of], dtype=torch.long)
    return text


def unpatchify(patches: torch.Tensor, pos: torch.Tensor, patch_size: int) -> torch.Tensor:
    """One page's (N, C*p*p) patches and (N, 2) positions -> the (C, H, W) image they came from."""
    p = patch_size
    c = patches.shape[1] // (p * p)
    rows, cols = int(pos[:, 0].max()) + 1, int(pos[:, 1].max()) + 1
    out = torch.full((c, rows * p, cols * p), 255, dtype=patches.dtype)
    for patch, (r, q) in zip(patches, pos.tolist()):
        out[:, r * p:(r + 1) * p, q * p:(q + 1) * p] = patch.view(c, p, p)
    return out


def page_image(batch: dict[str, Any], index: int, patch_size: int) -> torch.Tensor:
    """Sample `index`'s page of a collate_patches batch as a (C, H, W) uint8 image."""
    r, s = int(batch["sample_row"][index]), int(batch["sample_segment"][index])
    keep = batch["segment"][r] == s
    return unpatchify(batch["patches"][r][keep], batch["patch_pos"][r][keep], patch_size)
