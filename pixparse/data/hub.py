"""Hugging Face `datasets` datasets in the Hub's schemas as pixparse samples: the write formats
hf_cord, hf_rvl_cdip and hf_docvqa (`python -m pixparse.app.write hf_cord naver-clova-ix/cord-v2
shards/cord --split train`). A dataset is named on the Hub or is a local folder written by
`save_to_disk`; `datasets` is the optional extra `pip install pixparse[hub]`.

| format | schema (columns) | sample fields |
|---|---|---|
| `hf_cord` | `image`, `ground_truth` (JSON string: gt_parse, valid_line) | `fields`, boxed lines |
| `hf_rvl_cdip` | `image`, `label` (class index; names from the ClassLabel feature) | `label` |
| `hf_docvqa` | `image`, `question`, `answers`, `questionId`; `docId` and `ucsf_document_page_no` where present | `qa` (a page's questions together) |
"""
import io
import os
from collections.abc import Iterator
from typing import Any

from pixparse.data.formats import RVL_CDIP_LABELS, Sample, _cord_ground_truth, _page_sample, decoded_image


def load_split(source: str, split: str) -> Any:
    """A local `save_to_disk` folder (a Dataset, or a DatasetDict and its `split`) or a Hub name,
    with images left undecoded (their bytes are what the shards keep)."""
    try:
        import datasets
    except ImportError:
        raise ValueError("the hf_* formats read Hugging Face datasets: pip install 'pixparse[hub]' "
                         "(the datasets library)") from None
    if os.path.isdir(source):
        data = datasets.load_from_disk(source)
    else:
        data = datasets.load_dataset(source, split=split)
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise ValueError(f"{source}: no split {split!r}; it has {sorted(data)} (--split)")
        data = data[split]
    if "image" not in data.column_names:
        raise ValueError(f"{source}: no 'image' column; columns {data.column_names}")
    return data.cast_column("image", datasets.Image(decode=False))


def _image(row: dict[str, Any], source: str, index: int) -> tuple[bytes, tuple[int, int], str]:
    """A row's image bytes, (width, height) and sample key, checked to decode."""
    cell = row["image"]
    data = cell.get("bytes") or (open(cell["path"], "rb").read() if cell.get("path") else None)
    if not data:
        raise ValueError(f"{source} row {index}: the image has neither bytes nor a readable path")
    image = decoded_image(data, f"{source} row {index}")
    ext = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif"}.get(image.format or "")
    if ext is None:  # another format: kept as PNG, losslessly
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data, ext = buf.getvalue(), "png"
    return data, image.size, ext


def read_hf_cord(source: str, split: str = "train") -> Iterator[Sample]:
    data = load_split(source, split)
    for i, row in enumerate(data):
        gt, lines = _cord_ground_truth(row["ground_truth"])
        yield _page_sample(f"{split}_{i:06d}", *_image(row, source, i), lines, fields=gt.get("gt_parse", {}))


def read_hf_rvl_cdip(source: str, split: str = "train") -> Iterator[Sample]:
    data = load_split(source, split)
    feature = data.features["label"]
    names = list(getattr(feature, "names", None) or RVL_CDIP_LABELS)
    for i, row in enumerate(data):
        label = row["label"]
        name = label if isinstance(label, str) else names[int(label)]
        yield _page_sample(f"{split}_{i:06d}", *_image(row, source, i), [], label=name, split=split)


def read_hf_docvqa(source: str, split: str = "train") -> Iterator[Sample]:
    """One sample per page with all its questions: rows of one page (the same docId and page
    number) are consecutive in the Hub's DocVQA datasets; without those columns, one per row."""
    data = load_split(source, split)
    columns = set(data.column_names)
    page_of = (lambda r: (r["docId"], r.get("ucsf_document_page_no"))) if "docId" in columns else None
    group: list[tuple[int, dict[str, Any]]] = []

    def flush() -> Iterator[Sample]:
        i, first = group[0]
        qa = [{"question_id": r.get("questionId", j), "question": r["question"], "answers": list(r.get("answers") or [])}
              for j, r in group]
        yield _page_sample(f"{split}_{i:06d}", *_image(first, source, i), [], qa=qa)

    for i, row in enumerate(data):
        if group and (page_of is None or page_of(row) != page_of(group[-1][1])):
            yield from flush()
            group = []
        group.append((i, row))
    if group:
        yield from flush()


HUB_READERS = {"hf_cord": read_hf_cord, "hf_rvl_cdip": read_hf_rvl_cdip, "hf_docvqa": read_hf_docvqa}
