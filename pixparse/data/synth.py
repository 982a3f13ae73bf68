"""Synthetic document pages (SynthDoG idea): render text with Pillow, keep true line boxes.

Pages vary font, size, column count, margins, line spacing, ink and paper tone, and noise.
Text is drawn from a built-in vocabulary plus numbers, dates and amounts, so a run needs no
download. Some documents are multi-page TIFFs, exercising page choice in the loader.
"""
import glob
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no will "
    "more out up into do any your what some can only other new time could these two may first "
    "then do people like over such our man me even most made after also did many before must "
    "through years where much way well down should because each just those how too little state "
    "good very make world still own see men work long get here between both life being under "
    "never day same another know while last might us great old year off come since against go "
    "came right used take three invoice total amount date payment order account number address "
    "company report section table figure page summary results method data model form name "
    "signature receipt tax subtotal cash change item quantity price unit description customer "
    "service department meeting memo subject reference research analysis product market sales "
    "review agreement contract policy office telephone fax street city county board committee"
).split()


def _vocab_line(rng: random.Random, max_chars: int) -> str:
    words: list[str] = []
    while True:
        r = rng.random()
        if r < 0.08:
            w = str(rng.randint(0, 99999))
        elif r < 0.11:
            w = f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(1950, 2030)}"
        elif r < 0.14:
            w = f"${rng.randint(1, 9999)}.{rng.randint(0, 99):02d}"
        else:
            w = rng.choice(_WORDS)
            if rng.random() < 0.1:
                w = w.capitalize()
            if rng.random() < 0.05:
                w += rng.choice(",.:;")
        if len(" ".join(words + [w])) > max_chars:
            return " ".join(words) if words else w[:max_chars]
        words.append(w)


def find_fonts() -> list[str]:
    """System TrueType fonts (any found), else Pillow's built-in scalable font."""
    paths = []
    for pattern in ("/usr/share/fonts/**/*.ttf", "/usr/share/fonts/**/*.otf", "/Library/Fonts/*.ttf"):
        paths += glob.glob(pattern, recursive=True)
    return sorted(paths)


def _load_font(path: str | None, size: int) -> ImageFont.FreeTypeFont:
    if path is None:
        return ImageFont.load_default(size)
    return ImageFont.truetype(path, size)


@dataclass
class SynthPage:
    image: Image.Image
    lines: list[str]
    boxes: list[list[float]]  # [x0, y0, x1, y1] in 0..1 of the page


def render_page(
    rng: random.Random, size: tuple[int, int], fonts: list[str],
    font_size_range: tuple[float, float] = (1 / 70, 1 / 30),
    line_text: Callable[[random.Random, int], str] = _vocab_line,
) -> SynthPage:
    """Render one page of size (width, height), fonts sized within `font_size_range` (fractions
    of the page height); `line_text(rng, max_chars)` writes each line (words by default)."""
    width, height = size
    paper = rng.randint(225, 255)
    ink = rng.randint(0, 70)
    image = Image.new("L", (width, height), paper)
    draw = ImageDraw.Draw(image)
    font_path = rng.choice(fonts) if fonts else None
    lo = max(8, int(font_size_range[0] * height + 1e-9))
    hi = max(10, int(font_size_range[1] * height + 1e-9))
    font_size = rng.randint(lo, max(lo, hi))
    font = _load_font(font_path, font_size)
    num_columns = rng.choice((1, 1, 2))
    margin = int(width * rng.uniform(0.04, 0.1))
    gutter = int(width * 0.04)
    column_width = (width - 2 * margin - (num_columns - 1) * gutter) // num_columns
    spacing = rng.uniform(1.15, 1.6)
    line_height = int(font_size * spacing)
    avg_char = max(1.0, font.getlength("abcdefghij klmnopq") / 18)
    max_chars = max(4, int(column_width / avg_char))
    lines, boxes = [], []
    for col in range(num_columns):
        x = margin + col * (column_width + gutter)
        y = int(height * rng.uniform(0.04, 0.1))
        while y + line_height < height * 0.95:
            if rng.random() < 0.08:  # paragraph break
                y += line_height
                continue
            text = line_text(rng, rng.randint(max(3, max_chars // 3), max_chars))
            while text and font.getlength(text) > column_width:
                text = text[:-1].rstrip()
            if not text:
                break
            draw.text((x, y), text, fill=ink, font=font)
            x0, y0, x1, y1 = draw.textbbox((x, y), text, font=font)
            lines.append(text)
            boxes.append([round(x0 / width, 4), round(y0 / height, 4),
                          round(x1 / width, 4), round(y1 / height, 4)])
            y += line_height
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    if rng.random() < 0.5:
        image = gaussian_noise(image, rng, (3, 12))
    return SynthPage(image=image, lines=lines, boxes=boxes)


def gaussian_noise(image: Image.Image, rng: random.Random, sigma: tuple[float, float]) -> Image.Image:
    """`image` (gray) plus Gaussian pixel noise of a standard deviation drawn from `sigma`."""
    arr = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0, rng.uniform(*sigma), arr.shape)
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))


def synth_document(
    rng: random.Random, size: tuple[int, int], fonts: list[str], num_pages: int,
    font_size_range: tuple[float, float] = (1 / 70, 1 / 30),
) -> dict[str, bytes]:
    """One IDL-format sample: {'json': ..., 'png' or 'tif': ...} (multi-page docs are TIFF)."""
    pages = [render_page(rng, size, fonts, font_size_range) for _ in range(num_pages)]
    anno = {
        "pages": [
            {
                "lines": {"text": p.lines, "bbox": p.boxes},
                "width": size[0],
                "height": size[1],
            }
            for p in pages
        ]
    }
    buf = io.BytesIO()
    if num_pages == 1:
        pages[0].image.save(buf, format="PNG", optimize=False)
        ext = "png"
    else:
        pages[0].image.save(
            buf, format="TIFF", save_all=True, append_images=[p.image for p in pages[1:]],
            compression="tiff_deflate",
        )
        ext = "tif"
    return {"json": json.dumps(anno).encode(), ext: buf.getvalue()}
