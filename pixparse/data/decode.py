"""Decode IDL/PDFA-format samples: annotation JSON -> page texts, image bytes -> one PIL page."""
import io
import json
import random
from dataclasses import dataclass
from typing import Any

import orjson
from PIL import Image

IMAGE_EXTS = ("png", "jpg", "jpeg", "tif", "tiff", "webp", "pdf")


class SampleError(Exception):
    """A sample that cannot be used; `reason` is the counter key (e.g. 'bad_json')."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Page:
    image: Image.Image
    text: str
    page_index: int
    anno: dict[str, Any] | None = None  # the document's whole annotation (task fields live there)
    box_format: str = "auto"  # how the annotation's line boxes are written (see page_line_boxes)


def page_lines(page: dict[str, Any]) -> list[str]:
    """Line texts of one page in IDL/PDFA format, new ({'lines': {'text': [...]}}) or old
    ({'text': [...]})."""
    if "lines" in page and isinstance(page["lines"], dict):
        lines = page["lines"].get("text", [])
    else:
        lines = page.get("text", [])
    if isinstance(lines, str):
        lines = [lines]
    return [str(t) for t in lines]


def page_line_boxes(page: dict[str, Any], box_format: str = "auto") -> list[list[float]] | None:
    """The line boxes of one page, one per `page_lines(page)` entry, as [x0, y0, x1, y1] in 0..1;
    None when the page has none (or not one per line). Layouts: {'lines': {'text', 'bbox'}}
    (pixparse, pdfa-eng-wds) or {'text', 'bbox'} (idl-wds). `box_format` 'xyxy' or 'xywh'
    ([x, y, width, height]: the public shards); 'auto': xywh where any box read as xyxy would end
    before it starts (a line's width or height under its x or y), else xyxy."""
    lines = page["lines"] if isinstance(page.get("lines"), dict) else page
    boxes = lines.get("bbox")
    if not isinstance(boxes, list) or not boxes or len(boxes) != len(page_lines(page)):
        return None
    try:
        boxes = [[float(v) for v in box] for box in boxes]
    except (TypeError, ValueError) as e:
        raise SampleError("bad_json", f"a line box is not numbers: {e}") from None
    if any(len(box) != 4 for box in boxes):
        raise SampleError("bad_json", "a line box does not have 4 numbers")

    def inverted(xyxy: list[list[float]]) -> bool:  # a box that ends before it starts
        return any(b[2] < b[0] or b[3] < b[1] for b in xyxy)

    if box_format == "auto":
        box_format = "xywh" if inverted(boxes) else "xyxy"
    if box_format == "xywh":
        boxes = [[x, y, x + w, y + h] for x, y, w, h in boxes]
    if inverted(boxes):
        raise SampleError("bad_json", f"a line box ends before it starts as {box_format} "
                                      f"(--data.*.box_format {box_format})")
    return boxes


def find_image_key(sample: dict[str, Any]) -> str:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext
    raise SampleError("missing_image", f"no image entry among {IMAGE_EXTS}; keys {sorted(sample)}")


class _PdfPages:
    """A PDF as pages rendered on demand, at the scale that fits the target size (no full-size
    render then downscale)."""

    def __init__(self, data: bytes) -> None:
        import pypdfium2 as pdfium

        self.doc = pdfium.PdfDocument(data)
        self.n_frames = len(self.doc)

    def render(self, index: int, target_size: tuple[int, int] | None, grayscale: bool,
               draft: bool = True, max_pixels: int | None = None) -> Image.Image:
        page = self.doc[index]
        scan = self._scanned_jpeg(page)
        if scan is not None:
            image = Image.open(io.BytesIO(scan))
            check_pixels(image.size, max_pixels, f"pdf page {index}")
            _draft(image, target_size if draft else None, grayscale)
            image.load()
            return image
        width_pt, height_pt = page.get_size()
        if target_size is None:
            scale = 2.0  # 144 dpi
        else:
            scale = min(target_size[0] / height_pt, target_size[1] / width_pt)
        check_pixels((round(width_pt * scale), round(height_pt * scale)), max_pixels, f"pdf page {index}")
        return page.render(scale=scale, grayscale=grayscale).to_pil()

    @staticmethod
    def _scanned_jpeg(page: Any) -> bytes | None:
        """The JPEG of a scanned page (one upright image filling the page, nothing else), taken
        out as is: decoding it at reduced size beats rendering the page."""
        objects = list(page.get_objects(max_depth=1))
        if len(objects) != 1 or objects[0].type != 3:  # 3: FPDF_PAGEOBJ_IMAGE
            return None
        image = objects[0]
        if image.get_filters() != ["DCTDecode"]:
            return None
        a, b, c, d, e, f = image.get_matrix().get()
        width_pt, height_pt = page.get_size()
        if b or c or a <= 0 or d <= 0 or abs(e) > 1 or abs(f) > 1:
            return None  # rotated, flipped or offset: let PDFium compose it
        if abs(a - width_pt) > 0.02 * width_pt or abs(d - height_pt) > 0.02 * height_pt:
            return None
        return bytes(image.get_data(decode_simple=False))


def fit_size(size: tuple[int, int], target_size: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of `size` (w, h) scaled to fit `target_size` (H, W), aspect kept."""
    w, h = size
    scale = min(target_size[0] / h, target_size[1] / w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _draft(image: Image.Image, target_size: tuple[int, int] | None, grayscale: bool) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale (still >= the fit size) and straight to gray;
    with no target size, at full size (straight to gray still: libjpeg's luma, exact)."""
    if image.format == "JPEG":
        image.draft("L" if grayscale else "RGB", fit_size(image.size, target_size) if target_size else image.size)


def check_pixels(size: tuple[int, int], max_pixels: int | None, what: str) -> None:
    """Refuse an image of more than `max_pixels` pixels from its header, before decoding it."""
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        raise SampleError("image_too_large", f"{what}: {size[0]}x{size[1]} pixels, over "
                                             f"--data.*.max_image_pixels={max_pixels}")


def _image_text_pair(sample: dict[str, Any], max_pixels: int | None = None) -> Page:
    """cc12m-style pair: an image and its caption/text in 'txt'."""
    try:
        text = sample["txt"].decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise SampleError("bad_text", str(e)) from e
    if not text:
        raise SampleError("empty_page", "empty txt")
    key = find_image_key(sample)
    try:
        image = Image.open(io.BytesIO(sample[key]))
        check_pixels(image.size, max_pixels, key)
        image.load()  # captions go to any model size: no draft
    except SampleError:
        raise
    except Exception as e:
        raise SampleError("bad_image", f"{key}: {e}") from e
    return Page(image=image, text=text, page_index=0)


def decode_document_page(
    sample: dict[str, Any],
    page_sampling: str,
    rng: random.Random,
    target_size: tuple[int, int] | None = None,
    grayscale: bool = False,
) -> Page:
    """Pick one annotated page of a document sample ('random' or 'first') and decode it."""
    if page_sampling == "all":
        raise ValueError("decode_document_page gives one page: use decode_document_pages for 'all'")
    return decode_document_pages(sample, page_sampling, rng, target_size, grayscale)[0]


def decode_document_pages(
    sample: dict[str, Any],
    page_sampling: str,
    rng: random.Random,
    target_size: tuple[int, int] | None = None,
    grayscale: bool = False,
    need_text: bool = True,
    draft: bool = True,
    max_pixels: int | None = None,
    box_format: str = "auto",
) -> list[Page]:
    """Decode the annotated page(s) of a document sample; pages without text are never chosen
    unless `need_text` is False (tasks whose target is not the page text: classes, answers).

    Args:
        sample: webdataset sample: 'json' bytes plus one image entry (multi-page tif or pdf
            allowed), or an image-text pair ('txt' + image, no json).
        page_sampling: 'random' (one page with text, drawn from `rng`), 'first', or 'all'.
        target_size: (H, W) the image is going to: JPEGs decode at a reduced DCT scale and PDFs
            render at the scale that fits it.
        grayscale: decode JPEG/PDF straight to gray.
        draft: JPEGs (and scanned PDF pages) decode at a reduced DCT scale near target_size;
            False: at full size (--data.*.decode exact).
        max_pixels: a page image of more pixels is skipped ('image_too_large'), from its header.
        box_format: how the annotation's line boxes are written (page_line_boxes).
    """
    if "__image__" in sample:  # rendered in the worker (data.render): decoded already
        return [Page(image=sample["__image__"], text=sample["__text__"], page_index=0,
                     anno={"random": sample.get("__random__", False)})]
    if "json" not in sample and "txt" in sample:
        return [_image_text_pair(sample, max_pixels)]
    if "json" not in sample:
        raise SampleError("missing_json", f"keys {sorted(k for k in sample if not k.startswith('__'))}")
    try:
        anno = orjson.loads(sample["json"])
    except orjson.JSONDecodeError:
        try:  # what orjson refuses and json reads (NaN, Infinity, integers past 64 bits)
            anno = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SampleError("bad_json", str(e)) from e
    pages = anno.get("pages") if isinstance(anno, dict) else None
    if not isinstance(pages, list) or not pages:
        raise SampleError("bad_json", "no 'pages' list")
    image_key = find_image_key(sample)
    try:
        if image_key == "pdf":
            image = _PdfPages(sample[image_key])
        else:
            image = Image.open(io.BytesIO(sample[image_key]))
        num_frames = getattr(image, "n_frames", 1)
    except Exception as e:  # PIL raises many types for corrupt files
        raise SampleError("bad_image", f"{image_key}: {e}") from e
    candidates = [
        i for i, p in enumerate(pages[:num_frames])
        if isinstance(p, dict) and (not need_text or any(t.strip() for t in page_lines(p)))
    ]
    if not candidates:
        raise SampleError("empty_page", f"no page {'with text ' if need_text else ''}among "
                                        f"{min(len(pages), num_frames)}")
    if page_sampling == "all":
        indices = candidates
    else:
        indices = [candidates[0] if page_sampling == "first" else rng.choice(candidates)]
    out = []
    for index in indices:
        try:
            if isinstance(image, _PdfPages):
                page_image = image.render(index, target_size, grayscale, draft, max_pixels)
            else:
                if num_frames > 1:
                    image.seek(index)
                check_pixels(image.size, max_pixels, f"{image_key} page {index}")
                _draft(image, target_size if draft else None, grayscale)
                image.load()
                page_image = image.copy() if len(indices) > 1 else image
        except SampleError:
            raise
        except Exception as e:
            raise SampleError("bad_image", f"{image_key} page {index}: {e}") from e
        text = "\n".join(t for t in page_lines(pages[index]) if t.strip())
        out.append(Page(image=page_image, text=text, page_index=index, anno=anno, box_format=box_format))
    return out
