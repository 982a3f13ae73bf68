"""Readers that turn real dataset folders into IDL-format samples plus task fields.

Every sample is {'__key__', 'json': bytes, <image ext>: bytes}. The JSON always has
{"pages": [{"lines": {"text": [...], "bbox": [[x0, y0, x1, y1] in 0..1 of the page]}, ...}]}
(so OCR pretraining reads every format) and, per dataset, the task fields:
  "fields": {...}               key-field parsing (SROIE, CORD gt_parse)
  "entities": [...]             labelled form entities (FUNSD)
  "qa": [{"question", "answers"}] document QA (DocVQA)
  "label": "memo"               classification (RVL-CDIP)
  "words": {"text", "bbox", "label"} token labels (DocBank)
"""
import csv
import io
import json
import os
from collections.abc import Iterator
from typing import Any

from PIL import Image

from pixparse.data.decode import page_line_boxes, page_lines

Sample = dict[str, Any]

RVL_CDIP_LABELS = (
    "letter", "form", "email", "handwritten", "advertisement", "scientific report",
    "scientific publication", "specification", "file folder", "news article", "budget", "invoice",
    "presentation", "questionnaire", "resume", "memo",
)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _read(path: str, root: str) -> bytes:
    """The bytes of `path`, which must be a file inside the input folder `root` once symlinks are
    resolved (a link, or a '../' or absolute path in an annotation, must not pack another file)."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    if not real.startswith(base + os.sep):
        raise ValueError(f"{path} resolves to {real}, outside the input folder {base}; refusing to pack it")
    if not os.path.isfile(real):
        raise ValueError(f"{path} is not a file")
    with open(real, "rb") as f:
        return f.read()


def _text(path: str, root: str) -> str:
    """A text file inside `root` (see _read), undecodable bytes replaced."""
    return _read(path, root).decode("utf-8", errors="replace")


def _read_image(path: str, root: str) -> tuple[bytes, tuple[int, int]]:
    """An image file's bytes and (width, height), decoded in full first: only images are packed."""
    data = _read(path, root)
    return data, decoded_image(data, path).size


def decoded_image(data: bytes, what: str) -> Image.Image:
    """Image bytes opened and every frame decoded (only images are packed into shards); a
    ValueError naming `what` when they are not a readable image."""
    try:
        image = Image.open(io.BytesIO(data))
        for frame in range(getattr(image, "n_frames", 1)):
            image.seek(frame)
            image.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bytes that are not images
        raise ValueError(f"{what} is not a readable image ({type(e).__name__}: {e})") from None
    return image


def _norm_box(box: list[float], width: int, height: int) -> list[float]:
    x0, y0, x1, y1 = box
    return [round(x0 / width, 5), round(y0 / height, 5), round(x1 / width, 5), round(y1 / height, 5)]


def _quad_to_box(quad: list[float]) -> list[float]:
    xs, ys = quad[0::2], quad[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def _sample(
    root: str,
    key: str,
    image_path: str,
    lines: list[tuple[str, list[float]]],
    columns: bool = False,
    unboxed_lines: list[str] | None = None,
    **fields: Any,
) -> Sample:
    """Lines given in pixel boxes, put in reading order: top to bottom, left to right; with
    `columns`, lines starting right of the page middle come after those left of it. `root`: the
    input folder the image must lie in."""
    data, size = _read_image(image_path, root)
    return _page_sample(key, data, size, _ext_key(image_path), lines, columns, unboxed_lines, **fields)


def _page_sample(
    key: str,
    data: bytes,
    size: tuple[int, int],
    ext: str,
    lines: list[tuple[str, list[float]]],
    columns: bool = False,
    unboxed_lines: list[str] | None = None,
    **fields: Any,
) -> Sample:
    """`_sample` of an image already read: its bytes, (width, height) and sample key ('png', ...)."""
    width, height = size
    lines = [(t, b) for t, b in lines if t.strip()]
    lines.sort(key=lambda tb: (columns and tb[1][0] > 0.45 * width,
                               round(tb[1][1] / max(1, height) * 100), tb[1][0]))
    page_lines = {"text": [t for t, _ in lines], "bbox": [_norm_box(b, width, height) for _, b in lines]}
    if unboxed_lines is not None:  # text known only line by line, in its own order, without boxes
        page_lines = {"text": [t for t in unboxed_lines if t.strip()], "bbox": []}
    page = {
        "lines": page_lines,
        "width": width,
        "height": height,
    }
    anno = {"pages": [page], **fields}
    return {"__key__": key, "json": json.dumps(anno).encode(), ext: data}


def _ext_key(image_path: str) -> str:
    """The sample key for an image file: its extension, with jpeg/tiff spelled jpg/tif."""
    return os.path.splitext(image_path)[1].lower().lstrip(".").replace("jpeg", "jpg").replace("tiff", "tif")


def _require(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise ValueError(f"{what}: {path} does not exist")


def read_funsd(root: str) -> Iterator[Sample]:
    """FUNSD split folder: annotations/*.json + images/*.png. Lines = entities."""
    ann_dir = os.path.join(root, "annotations")
    _require(ann_dir, "funsd")
    for name in sorted(os.listdir(ann_dir)):
        stem = os.path.splitext(name)[0]
        form = json.loads(_read(os.path.join(ann_dir, name), root))["form"]
        entities = [{"id": e["id"], "text": e["text"], "label": e["label"], "box": e["box"]}
                    for e in form]
        links = sorted({tuple(link) for e in form for link in e.get("linking", [])})
        yield _sample(root, stem, os.path.join(root, "images", stem + ".png"),
                      [(e["text"], e["box"]) for e in form], entities=entities, links=links)


def read_sroie(root: str) -> Iterator[Sample]:
    """SROIE: img/<id>.jpg, box/<id>.csv (8 coordinates + transcript), key/<id>.json."""
    _require(os.path.join(root, "box"), "sroie")
    for name in sorted(os.listdir(os.path.join(root, "box"))):
        stem = os.path.splitext(name)[0]
        lines = []
        for row in _text(os.path.join(root, "box", name), root).splitlines():
            parts = row.split(",", 8)  # the transcript may hold commas
            if len(parts) == 9:
                lines.append((parts[8], _quad_to_box([float(v) for v in parts[:8]])))
        fields = json.loads(_read(os.path.join(root, "key", stem + ".json"), root))
        yield _sample(root, stem, os.path.join(root, "img", stem + ".jpg"), lines, fields=fields)


def read_cord(root: str) -> Iterator[Sample]:
    """CORD in the Hugging Face layout: json/<id>.json holding {"ground_truth": "<json string>"}
    (or the parsed object) with gt_parse and valid_line, and image/<id>.png|jpg."""
    _require(os.path.join(root, "json"), "cord")
    for name in sorted(os.listdir(os.path.join(root, "json"))):
        stem = os.path.splitext(name)[0]
        raw = json.loads(_read(os.path.join(root, "json", name), root))
        gt, lines = _cord_ground_truth(raw.get("ground_truth", raw))
        image = next((os.path.join(root, "image", stem + e) for e in IMAGE_EXTS
                      if os.path.isfile(os.path.join(root, "image", stem + e))), None)
        if image is None:
            raise ValueError(f"cord: no image for {stem} under {root}/image")
        yield _sample(root, stem, image, lines, fields=gt.get("gt_parse", {}))


def _cord_ground_truth(gt: str | dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, list[float]]]]:
    """CORD's ground truth (a JSON string or the object) -> it parsed, and its valid lines with
    pixel boxes (each line's words' quads joined)."""
    gt = json.loads(gt) if isinstance(gt, str) else gt
    lines = []
    for line in gt.get("valid_line", []):
        words = [w for w in line.get("words", []) if w.get("text", "").strip()]
        if words:
            boxes = [_quad_to_box([w["quad"][k] for k in ("x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4")])
                     for w in words]
            box = [min(b[0] for b in boxes), min(b[1] for b in boxes),
                   max(b[2] for b in boxes), max(b[3] for b in boxes)]
            lines.append((" ".join(w["text"] for w in words), box))
    return gt, lines


def read_docvqa(root: str, split_file: str = "") -> Iterator[Sample]:
    """DocVQA official layout: <root>/<split>.json ({"data": [{"questionId", "question", "image",
    "answers"}]}) with image paths relative to root. One sample per page, all its questions."""
    path = split_file or next((os.path.join(root, f) for f in sorted(os.listdir(root)) if f.endswith(".json")), "")
    _require(path, "docvqa annotation json")
    records = json.loads(_read(path, root))["data"]
    by_image: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_image.setdefault(r["image"], []).append(
            {"question_id": r["questionId"], "question": r["question"], "answers": r.get("answers", [])})
    for image, qa in sorted(by_image.items()):
        key = os.path.splitext(image)[0].replace("/", "_")
        yield _sample(root, key, os.path.join(root, image), [], qa=qa)


def read_rvl_cdip(root: str) -> Iterator[Sample]:
    """RVL-CDIP: label lists <root>/{train,val,test}.txt of '<image path> <label index>' lines,
    images under <root>/images; the split goes into the sample."""
    splits = [s for s in ("train", "val", "test") if os.path.isfile(os.path.join(root, f"{s}.txt"))]
    if not splits:
        raise ValueError(f"rvl_cdip: no train.txt/val.txt/test.txt in {root}")
    for split in splits:
        for row in _text(os.path.join(root, f"{split}.txt"), root).splitlines():
            if not row.strip():
                continue
            rel, label = row.rsplit(maxsplit=1)
            stem = os.path.splitext(os.path.basename(rel))[0]
            yield _sample(root, stem, os.path.join(root, "images", rel), [],
                          label=RVL_CDIP_LABELS[int(label)], split=split)


def read_docbank(root: str) -> Iterator[Sample]:
    """DocBank: <prefix>.txt (token x0 y0 x1 y1 R G B font label, boxes in 0..1000) + <prefix>_ori.jpg.
    Tokens become words; lines are runs of tokens on the same baseline, in file order."""
    _require(root, "docbank")
    for name in sorted(os.listdir(root)):
        if not name.endswith(".txt") or name.startswith(("README", "labels")):
            continue
        stem = name[: -len(".txt")]
        image = os.path.join(root, stem + "_ori.jpg")
        if not os.path.isfile(image):
            continue
        width, height = _read_image(image, root)[1]
        words, lines, current = [], [], []
        text = _text(os.path.join(root, name), root).splitlines()
        for row in csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 10 or not row[0].strip():
                continue
            box = [float(v) * s / 1000 for v, s in zip(row[1:5], (width, height, width, height))]
            words.append((row[0], box, row[9]))
            prev = current[-1][1] if current else None
            line_height = box[3] - box[1] + 1
            # A new line when the baseline moves or the gap to the previous token is a column gap
            if prev and (abs(prev[3] - box[3]) > 0.5 * line_height or box[0] - prev[2] > 2 * line_height
                         or box[0] < prev[0]):
                lines.append(current)
                current = []
            current.append((row[0], box))
        if current:
            lines.append(current)
        line_items = [(" ".join(t for t, _ in ln), [min(b[0] for _, b in ln), min(b[1] for _, b in ln),
                                                    max(b[2] for _, b in ln), max(b[3] for _, b in ln)])
                      for ln in lines]
        word_fields = {"text": [w[0] for w in words],
                       "bbox": [_norm_box(w[1], width, height) for w in words],
                       "label": [w[2] for w in words]}
        yield _sample(root, stem, image, line_items, columns=True, words=word_fields)


def read_folder(root: str) -> Iterator[Sample]:
    """A plain folder: <stem>.<image ext> with <stem>.txt (one line per text line) or <stem>.json
    (already IDL-format). Images without text are skipped."""
    _require(root, "folder")
    for name in sorted(os.listdir(root)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_EXTS:
            continue
        image = os.path.join(root, name)
        if os.path.isfile(os.path.join(root, stem + ".json")):
            anno = _read(os.path.join(root, stem + ".json"), root)
            yield {"__key__": stem, "json": anno, _ext_key(image): _read_image(image, root)[0]}
        elif os.path.isfile(os.path.join(root, stem + ".txt")):
            text = _read(os.path.join(root, stem + ".txt"), root).decode("utf-8").splitlines()
            yield _sample(root, stem, image, [], unboxed_lines=text)


def line_crops(sample: Sample, min_height_px: int = 8, box_format: str = "auto") -> Iterator[Sample]:
    """Each boxed, non-empty text line of a sample's first page as its own sample: the line's box
    (plus a quarter of its height above and below, and as much to the sides) cropped from the
    page, gray, with the line's text. Lines under `min_height_px` high are left out. Boxes as
    `decode.page_line_boxes` reads them (pixparse's, pdfa-eng-wds' and idl-wds' layouts)."""
    anno = json.loads(sample["json"])
    page = anno["pages"][0]
    texts, boxes = page_lines(page), page_line_boxes(page, box_format)
    if boxes is None:
        return
    ext = next(k for k in ("png", "jpg", "tif") if k in sample)
    image = Image.open(io.BytesIO(sample[ext])).convert("L")
    width, height = image.size
    for j, (text, box) in enumerate(zip(texts, boxes)):
        x0, y0, x1, y1 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
        pad = 0.25 * (y1 - y0)
        if not text.strip() or y1 - y0 < min_height_px or x1 <= x0:
            continue
        crop = image.crop((max(0, round(x0 - pad)), max(0, round(y0 - pad)),
                           min(width, round(x1 + pad)), min(height, round(y1 + pad))))
        buf = io.BytesIO()
        crop.save(buf, format="PNG")
        line_anno = {"pages": [{"lines": {"text": [text.strip()]}, "width": crop.width, "height": crop.height}]}
        yield {"__key__": f"{sample['__key__']}_l{j:03d}", "json": json.dumps(line_anno).encode(),
               "png": buf.getvalue()}


READERS = {
    "funsd": read_funsd,
    "sroie": read_sroie,
    "cord": read_cord,
    "docvqa": read_docvqa,
    "rvl_cdip": read_rvl_cdip,
    "docbank": read_docbank,
    "folder": read_folder,
}
