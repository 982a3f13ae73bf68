"""Pretraining objectives beyond reading: masked page parsing (Pix2Struct), prefix-LM and span
corruption (PaLI)."""
import random

import numpy as np
import pytest
from PIL import Image

from pixparse.data.decode import Page
from pixparse.tasks.config import TaskConfig
from pixparse.tasks.pretrain import (
    BLOCK, MASK_FILL, MaskedParse, PrefixSplit, SpanCorruption, sentinel, structure_markup,
)
from pixparse.tasks.registry import create_task

LINES = ["Invoice 2041", "Date 2026-11-30", "Total 12.50", "Paid by card", "Thank you"]
# two blocks: three lines close together, a gap, two more
BOXES = [[0.1, 0.10, 0.6, 0.14], [0.1, 0.15, 0.7, 0.19], [0.1, 0.20, 0.5, 0.24],
         [0.1, 0.40, 0.6, 0.44], [0.1, 0.45, 0.4, 0.49]]


XYWH = [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in BOXES]
SCORES = [0.99] * len(LINES)
LAYOUTS = {
    # pixparse's writers: lines with [x0, y0, x1, y1]
    "pixparse": {"pages": [{"lines": {"text": LINES, "bbox": BOXES}}]},
    # pixparse/pdfa-eng-wds: lines and words with [x, y, w, h], scores, image boxes
    "pdfa": {"pages": [{"images_bbox": [], "images_bbox_no_text_overlap": [],
                        "lines": {"text": LINES, "bbox": XYWH, "score": SCORES},
                        "words": {"text": LINES[0].split(), "bbox": [XYWH[0], XYWH[0]], "score": [0.9, 0.9]}}]},
    # pixparse/idl-wds: the page's lines at the page level, [x, y, w, h]
    "idl": {"pages": [{"text": LINES, "bbox": XYWH, "score": SCORES}]},
}


def _page(size=(200, 300), layout="pixparse", box_format="auto"):
    image = Image.new("L", size, 255)
    return Page(image=image, text="\n".join(LINES), page_index=0, anno=LAYOUTS[layout], box_format=box_format)


def test_structure_markup_groups_lines_into_blocks():
    lines = list(zip(LINES, BOXES))
    assert structure_markup(lines) == (f"{BLOCK[0]}Invoice 2041\nDate 2026-11-30\nTotal 12.50{BLOCK[1]}"
                                       f"{BLOCK[0]}Paid by card\nThank you{BLOCK[1]}")
    # a jump back up the page (a second column) starts a block too
    column = [("left", [0.1, 0.5, 0.4, 0.54]), ("right", [0.6, 0.1, 0.9, 0.14])]
    assert structure_markup(column).count(BLOCK[0]) == 2


@pytest.mark.parametrize("share,layout,box_format", [
    (0.0, "pixparse", "auto"), (0.4, "pixparse", "auto"), (1.0, "pixparse", "xyxy"),
    (0.4, "pdfa", "auto"), (1.0, "pdfa", "xywh"), (0.4, "idl", "auto"), (1.0, "idl", "xywh"),
])
def test_masked_regions_match_the_line_boxes(share, layout, box_format):
    """The public pretraining layouts (pdfa-eng-wds, idl-wds: [x, y, w, h]) mask and group the
    same regions as pixparse's own ([x0, y0, x1, y1]), told or detected."""
    page = _page(layout=layout, box_format=box_format)
    examples = MaskedParse("<s_pretrain>", share)(page, random.Random(3))
    pixels = np.asarray(page.image)
    w, h = page.image.size
    masked = []
    for i, (x0, y0, x1, y1) in enumerate(BOXES):
        region = pixels[int(np.ceil(y0 * h)):int(y1 * h), int(np.ceil(x0 * w)):int(x1 * w)]
        if (region == MASK_FILL).all():
            masked.append(i)
        else:
            assert (region == 255).all(), i  # untouched lines stay as they were
    assert len(masked) == round(share * len(BOXES))
    # nothing outside the boxes changed
    inside = np.zeros_like(pixels, dtype=bool)
    for x0, y0, x1, y1 in BOXES:
        inside[int(np.floor(y0 * h)):int(np.ceil(y1 * h)), int(np.floor(x0 * w)):int(np.ceil(x1 * w))] = True
    assert (pixels[~inside] == 255).all()
    # the target has every line, masked ones included, with the block markup
    target = examples[0].target
    assert all(line in target for line in LINES) and target.count(BLOCK[0]) == 2


def test_boxes_in_another_format_than_the_flag_says_are_a_counted_skip_naming_it():
    from pixparse.data.decode import SampleError

    with pytest.raises(SampleError, match=r"ends before it starts as xyxy \(--data.\*.box_format xyxy\)") as e:
        MaskedParse("<s_pretrain>", 0.4)(_page(layout="pdfa", box_format="xyxy"), random.Random(0))
    assert e.value.reason == "bad_json"


def test_masking_is_drawn_from_the_sample_rng():
    a, b = _page(), _page()
    MaskedParse("<s_pretrain>", 0.4)(a, random.Random(7))
    MaskedParse("<s_pretrain>", 0.4)(b, random.Random(7))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_prefix_split_and_span_corruption_reassemble_the_text():
    page = _page()
    words = page.text.split()
    for seed in range(5):
        (ex,) = PrefixSplit("<s_prefix>")(page, random.Random(seed))
        assert ex.prompt == "<s_prefix>"  # the task token starts the decoder; the text goes to the encoder
        assert (ex.header + " " + ex.target) == page.text
        (sp,) = SpanCorruption("<s_span>", 0.3, 2.0)(page, random.Random(seed))
        source = sp.header.split()
        target = sp.target.split()
        spans = sum(t.startswith("<extra_id_") for t in source)
        assert spans >= 1 and spans == sum(t.startswith("<extra_id_") for t in target)
        # fill each sentinel with its span: the original words come back
        fill, k, cur = {}, None, []
        for t in target:
            if t.startswith("<extra_id_"):
                if k is not None:
                    fill[k] = cur
                k, cur = t, []
            else:
                cur.append(t)
        fill[k] = cur
        rebuilt = [w for t in source for w in (fill[t] if t in fill else [t])]
        assert rebuilt == words
        assert len(words) - len([t for t in source if not t.startswith("<extra_id_")]) == round(0.3 * len(words))


def test_text_encoder_objectives_need_a_pali_preset():
    with pytest.raises(ValueError, match="trains pali presets"):
        create_task(TaskConfig(name="span_pretrain", model_name="cruller_tiny"))
    task = create_task(TaskConfig(name="span_pretrain", model_name="pali_tiny"))
    assert len(task.tokenizer.tokenize(sentinel(3))) == 1


@pytest.mark.parametrize("name,model", [("parse_pretrain", "pix2struct_tiny"), ("parse_pretrain", "cruller_tiny"),
                                        ("prefix_lm_pretrain", "pali_tiny"), ("span_pretrain", "pali_tiny")])
def test_objectives_train_end_to_end(name, model):
    from pixparse.data.config import DataLoaderConfig
    from pixparse.data.synth import find_fonts, synth_document

    task = create_task(TaskConfig(name=name, model_name=model, max_length=256))
    rng = random.Random(0)
    samples = [dict(synth_document(rng, (240, 320), find_fonts(), 1), __key__=str(i)) for i in range(3)]
    cfg = DataLoaderConfig(source="unused", num_samples=3)
    pre = task.preprocess(cfg, with_meta=True)
    batch = task.collate(cfg)([item for s in samples for item in pre(s, rng)])
    out = task(batch)
    out["loss"].backward()
    assert out["num_target_tokens"] > 0
    if name != "parse_pretrain":  # the encoder reads page text
        assert batch["prompt_mask"].sum(1).min() > 1
    else:
        assert "prompt_ids" not in batch or batch["prompt_ids"].shape[1] == 0
