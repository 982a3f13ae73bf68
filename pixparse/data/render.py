"""Rendered text as a training source: `--data.train.source render:lines` (or `render:blocks`,
`render:pages`), drawn in the loader workers with a new text every sample, so nothing can be
memorized and a model must read.

A source is `render:<kind>[?key=value&...]`:
    kind     lines (one text line), blocks (3-5 lines), pages (a synthetic page, see data.synth)
    height   canvas height in pixels (lines 32, blocks 96, pages 384)
    width    canvas width in pixels (lines 256, blocks 256, pages 288)
    random   share of lines (of a page's lines too) made of random characters, which no language
             model can guess (0.5)
    chars    most characters in a line (lines 16, blocks 24; fewer where the width runs out)
    alphabet what random lines are drawn from: all (letters, digits, receipt punctuation), upper
             (upper case and digits) or digits
    n        samples per draw of the source (256): the unit the loader mixes with real shards
    fonts    a folder whose .ttf/.otf fonts (searched recursively) join the default faces

Each sample is seeded by (seed, interval, rank, worker, draw, index), so a resumed run renders
the same samples. Fonts are the 12 DejaVu faces matplotlib ships (no download; the same on every
machine, so a seed renders the same held-out set anywhere), plus those of `fonts`. Augmentations: ink/paper contrast, slight rotation, blur, noise.
"""
import glob
import importlib.util
import os
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from pixparse.data.synth import _vocab_line, gaussian_noise, render_page

PREFIX = "render:"
KINDS = ("lines", "blocks", "pages")
_DEFAULT_SIZE = {"lines": (32, 256), "blocks": (96, 256), "pages": (384, 288)}
_DEFAULT_CHARS = {"lines": 16, "blocks": 24, "pages": 0}
# What random lines draw from: the characters of receipts and forms (no lowercase/uppercase bias).
RANDOM_CHARS = string.ascii_letters + string.digits + ".,:;-/$%()#&'+*@"
ALPHABETS = {"all": RANDOM_CHARS, "upper": string.ascii_uppercase + string.digits, "digits": string.digits}


@dataclass(frozen=True)
class RenderSpec:
    kind: str
    height: int
    width: int
    random_share: float = 0.5
    samples_per_draw: int = 256
    max_chars: int = 16
    font_dir: str = ""
    alphabet: str = "all"


def is_render_source(url: str) -> bool:
    return url.startswith(PREFIX)


def parse_render_source(url: str) -> RenderSpec:
    """'render:lines?height=32&width=256' -> RenderSpec; a ValueError names what is wrong."""
    kind, _, query = url[len(PREFIX):].partition("?")
    if kind not in KINDS:
        raise ValueError(f"{url!r}: the kind must be one of {', '.join(KINDS)} (render:lines, ...)")
    height, width = _DEFAULT_SIZE[kind]
    args = {"height": height, "width": width, "random": 0.5, "n": 256, "chars": _DEFAULT_CHARS[kind], "fonts": "",
            "alphabet": "all"}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in args:
            raise ValueError(f"{url!r}: unknown setting {key!r}; known: {', '.join(args)}")
        try:
            args[key] = value if key in ("fonts", "alphabet") else float(value) if key == "random" else int(value)
        except ValueError:
            raise ValueError(f"{url!r}: {key}={value!r} is not a number") from None
    if args["height"] < 8 or args["width"] < 8 or args["n"] < 1 or not 0 <= args["random"] <= 1 \
            or (kind != "pages" and args["chars"] < 4):
        raise ValueError(f"{url!r}: height and width must be >= 8, n >= 1, chars >= 4 and random in [0, 1]")
    if args["fonts"] and not os.path.isdir(args["fonts"]):
        raise ValueError(f"{url!r}: fonts={args['fonts']!r} is not a folder (give a folder of .ttf/.otf fonts)")
    if args["alphabet"] not in ALPHABETS:
        raise ValueError(f"{url!r}: alphabet={args['alphabet']!r}; known: {', '.join(ALPHABETS)}")
    return RenderSpec(kind, args["height"], args["width"], args["random"], args["n"], args["chars"], args["fonts"],
                      args["alphabet"])


# matplotlib's DejaVu text faces: Sans, Sans Mono and Serif in regular, bold, italic and bold italic
_MPL_FACES = tuple(f"DejaVu{family}{face}.ttf" for family in ("Sans", "SansMono", "Serif")
                   for face in ("", "-Bold", "-Oblique" if family != "Serif" else "-Italic",
                                "-BoldOblique" if family != "Serif" else "-BoldItalic"))


def render_fonts(font_dir: str = "") -> list[str]:
    """The 12 DejaVu text faces matplotlib ships, then the .ttf/.otf fonts under `font_dir`."""
    fonts = []
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        ttf = os.path.join(spec.submodule_search_locations[0], "mpl-data", "fonts", "ttf")
        fonts += [os.path.join(ttf, face) for face in _MPL_FACES if os.path.isfile(os.path.join(ttf, face))]
    if font_dir:
        fonts += sorted(p for ext in ("ttf", "otf") for p in glob.glob(os.path.join(font_dir, "**", f"*.{ext}"),
                                                                        recursive=True))
    if not fonts:
        raise ValueError("no fonts to render with: pip install matplotlib (it ships the DejaVu fonts) "
                         "or give a folder of fonts: render:lines?fonts=/usr/share/fonts")
    return fonts


def random_text(rng: random.Random, max_chars: int, random_share: float,
                alphabet: str = RANDOM_CHARS) -> tuple[str, bool]:
    """(text, is_random): characters of `alphabet` (in 1-3 groups), or words, numbers, dates, amounts."""
    if rng.random() < random_share:
        length = rng.randint(4, max(4, max_chars))
        chars = [rng.choice(alphabet) for _ in range(length)]
        for _ in range(rng.randint(0, 2)):  # word breaks inside, never at the ends
            if length > 4:
                chars[rng.randint(1, length - 2)] = " "
        return "".join(chars).replace("  ", " "), True
    return _vocab_line(rng, rng.randint(4, max(4, max_chars))), False


@dataclass
class Rendered:
    image: Image.Image  # gray, the canvas size
    text: str  # lines joined by newlines
    is_random: bool  # every line made of random characters


class TextRenderer:
    """Draws samples of one RenderSpec; picklable (fonts load lazily in each worker)."""

    def __init__(self, spec: RenderSpec, fonts: list[str] | None = None) -> None:
        self.spec = spec
        self.fonts = fonts if fonts is not None else render_fonts(spec.font_dir)
        self._cache: dict[tuple[str, int], ImageFont.FreeTypeFont] = {}

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "fonts": self.fonts, "_cache": {}}

    def font(self, path: str, size: int) -> ImageFont.FreeTypeFont:
        key = (path, size)
        if key not in self._cache:
            self._cache[key] = ImageFont.truetype(path, size)
        return self._cache[key]

    def __call__(self, rng: random.Random) -> Rendered:
        spec = self.spec
        paper, ink = rng.randint(170, 255), rng.randint(0, 90)
        if spec.kind == "pages":
            kinds: list[bool] = []  # whether each line is random characters

            def line_text(rng: random.Random, max_chars: int) -> str:
                text, is_random = random_text(rng, max_chars, spec.random_share, ALPHABETS[spec.alphabet])
                kinds.append(is_random)
                return text

            page = render_page(rng, (spec.width, spec.height), self.fonts, (0.03, 0.06), line_text)
            return Rendered(page.image, "\n".join(page.lines), bool(kinds) and all(kinds))
        num_lines = 1 if spec.kind == "lines" else rng.randint(3, 5)
        slot = spec.height / (num_lines + 0.5)  # each line's share of the height, half a line of margin
        size = max(8, int(slot * rng.uniform(0.75, 1.05)))
        font = self.font(rng.choice(self.fonts), size)
        image = Image.new("L", (spec.width, spec.height), paper)
        draw = ImageDraw.Draw(image)
        margin = rng.randint(1, max(2, spec.width // 32))
        avg_char = max(1.0, font.getlength("abcdefghij0123456789") / 20)
        max_chars = max(4, int((spec.width - 2 * margin) / avg_char))
        lines, all_random = [], True
        y = rng.uniform(0.05, 0.3) * slot
        for _ in range(num_lines):
            text, is_random = random_text(rng, min(max_chars, spec.max_chars), spec.random_share,
                                          ALPHABETS[spec.alphabet])
            while len(text) > 1 and font.getlength(text) > spec.width - 2 * margin:
                text = text[:-1].rstrip()
            x = rng.randint(margin, max(margin, int(spec.width - margin - font.getlength(text))))
            draw.text((x, y), text, fill=ink, font=font)
            lines.append(text)
            all_random &= is_random
            y += slot * rng.uniform(0.95, 1.05)
        if rng.random() < 0.5:  # slight rotation, paper-colored corners
            image = image.rotate(rng.uniform(-2.0, 2.0), resample=Image.BILINEAR, fillcolor=paper)
        if rng.random() < 0.5:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.0)))
        if rng.random() < 0.5:
            image = gaussian_noise(image, rng, (2, 14))
        return Rendered(image, "\n".join(lines), all_random)


def render_samples(url: str, seed: str, draw: int) -> Iterator[dict]:
    """The `n` samples of one draw of a render source, as loader samples: '__image__' (a PIL
    image), '__text__', '__random__'. `seed` names the stream (run seed, interval, rank, worker)."""
    renderer = _renderer(url)
    for i in range(renderer.spec.samples_per_draw):
        r = renderer(random.Random(f"render/{seed}/{draw}/{i}"))
        yield {"__key__": f"{seed.replace('/', '-')}-{draw}-{i}", "__url__": url, "__image__": r.image,
               "__text__": r.text, "__random__": r.is_random}


_RENDERERS: dict[str, TextRenderer] = {}


def _renderer(url: str) -> TextRenderer:
    """One renderer (and font cache) per source and process."""
    if url not in _RENDERERS:
        _RENDERERS[url] = TextRenderer(parse_render_source(url))
    return _RENDERERS[url]
