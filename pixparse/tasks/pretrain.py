"""Pretraining objectives on the page text.

- read_pretrain: read the page (Donut): image -> its text lines, any family.
- parse_pretrain (Pix2Struct's screenshot parsing, for documents): a share of the text lines is
  masked out of the image (gray boxes at their line boxes) and the model writes the whole page
  with its structure (blocks of lines), masked lines included. Warm up with read_pretrain
  (Pix2Struct's reading curriculum), then --task.init_from that run.
- prefix_lm_pretrain, span_pretrain (PaLI): a text encoder reads the image tokens and part of
  the page text: its first part (the decoder writes the rest), or the text with random word spans
  replaced by sentinels (the decoder writes the spans, T5's span corruption).
"""
import math
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from pixparse.data.decode import Page, SampleError, page_line_boxes, page_lines
from pixparse.tasks.base import Example, TaskBase

PRETRAIN_PROMPT = "<s_pretrain>"
BLOCK = ("<s_block>", "</s_block>")
MASK_FILL = 128  # masked lines become mid-gray boxes: visibly masked, unlike blank paper
NUM_SENTINELS = 64


@dataclass
class PageText:
    """Page -> one example whose target (and reference) is the page's text, line by line."""

    prompt: str

    def __call__(self, page: Page, rng: random.Random) -> list[Example]:
        return [Example(self.prompt, page.text, page.text)]


class TaskReadPretrain(TaskBase):
    """Read the page: learn to write every text line of the page in reading order."""

    name = "read_pretrain"
    prompt = PRETRAIN_PROMPT
    needs_page_text = True

    def __init__(self, cfg: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg, *args, **kwargs)
        self.ctc_head: nn.Linear | None = None
        if cfg.ctc_weight:
            # one class per token id plus the CTC blank (the last class)
            self.ctc_head = nn.Linear(self.model.image_encoder.num_features, len(self.tokenizer) + 1)

    def example_builder(self) -> PageText:
        return PageText(self.prompt)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.ctc_head is None:
            return super().forward(batch)
        # the image encoder's tokens, taken on their way to the family's encoder side (the
        # decoder's memory, or pali's text encoder), laid out as each sample's line by the family
        seen: list[torch.Tensor] = []
        hook = self.model.image_encoder.register_forward_hook(lambda module, args, out: seen.append(out))
        try:
            out = super().forward(batch)
        finally:
            hook.remove()
        line, lengths = self.family.line_tokens(batch, seen[0], self.model)
        ctc = ctc_loss(self.ctc_head(line), batch["labels"], self.tokenizer.eos_token_id, lengths)
        return {**out, "loss": out["loss"] + self.cfg.ctc_weight * ctc, "ctc_loss": ctc.detach()}

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return reading_scores(predictions, references)

    def sample_scores(self, prediction: Any, reference: Any) -> dict[str, float]:
        return reading_scores([prediction], [reference])


def ctc_loss(logits: torch.Tensor, labels: torch.Tensor, eos_id: int,
             input_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """CTC (Graves et al. 2006) of per-token class logits (B, N, V + 1; blank = V; a sample's
    first `input_lengths` tokens, default all N) against each sample's target ids (its labels that
    are not ignored, eos left out); mean over samples of the loss per target token. Targets longer
    than the tokens can hold give 0 (zero_infinity)."""
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (N, B, V + 1)
    keep = (labels != -100) & (labels != eos_id)
    targets = labels[keep]
    lengths = keep.sum(dim=1)
    inputs = (torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long, device=logits.device)
              if input_lengths is None else input_lengths)
    return F.ctc_loss(log_probs, targets, inputs, lengths, blank=logits.shape[-1] - 1, zero_infinity=True)


def reading_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """CER and WER over the dataset (jiwer: total edits / total reference characters or words),
    CER with case folded, and the share of samples read exactly.
    Normalization: none beyond what the targets already are (lines joined by newlines, which
    count as characters for CER and as word breaks for WER); empty references are left out."""
    import jiwer

    pairs = [(r, p) for r, p in zip(references, predictions, strict=True) if r.strip()]
    if not pairs:
        return {}
    refs, preds = [r for r, _ in pairs], [p for _, p in pairs]
    return {"cer": jiwer.cer(refs, preds), "wer": jiwer.wer(refs, preds),
            # SROIE's transcripts are upper case whatever the receipt prints: CER with case folded
            "cer_nocase": jiwer.cer([r.lower() for r in refs], [p.lower() for p in preds]),
            "exact_match": sum(r == p for r, p in pairs) / len(pairs)}


def boxed_lines(page: Page) -> list[tuple[str, list[float] | None]]:
    """The page's non-empty lines with their boxes ([x0, y0, x1, y1] in 0..1; None when the
    shards have no box for the line)."""
    pages = (page.anno or {}).get("pages") or [{}]
    entry = pages[page.page_index] if page.page_index < len(pages) else {}
    lines = page_lines(entry)
    boxes = page_line_boxes(entry, page.box_format) or [None] * len(lines)
    return [(t, b) for t, b in zip(lines, boxes) if t.strip()]


def structure_markup(lines: list[tuple[str, list[float] | None]]) -> str:
    """Lines (in reading order) grouped into blocks: a new block where the vertical gap to the
    previous line exceeds 0.75 of the median line height, or where reading order jumps up (a new
    column). <s_block>line\nline</s_block><s_block>..."""
    heights = sorted(b[3] - b[1] for _, b in lines if b is not None)
    median = heights[len(heights) // 2] if heights else 0.0
    blocks: list[list[str]] = []
    prev = None
    for text, box in lines:
        new = not blocks or (box is not None and prev is not None and
                             (box[1] - prev[3] > 0.75 * median or box[1] < prev[1] - 0.5 * median))
        if new:
            blocks.append([])
        blocks[-1].append(text)
        prev = box if box is not None else prev
    return "".join(f"{BLOCK[0]}{chr(10).join(b)}{BLOCK[1]}" for b in blocks)


@dataclass
class MaskedParse:
    """Page -> its structure markup; `mask_share` of its boxed lines painted over in the image."""

    prompt: str
    mask_share: float

    def __call__(self, page: Page, rng: random.Random) -> list[Example]:
        lines = boxed_lines(page)
        if not lines:
            raise SampleError("empty_page", "no text line")
        boxed = [i for i, (_, b) in enumerate(lines) if b is not None]
        masked = sorted(rng.sample(boxed, round(self.mask_share * len(boxed)))) if boxed else []
        if masked:
            page.image = mask_lines(page.image, [lines[i][1] for i in masked])
        target = structure_markup(lines)
        return [Example(self.prompt, target, target)]


def mask_lines(image: Image.Image, boxes: list[list[float]]) -> Image.Image:
    """A copy of `image` with each box (0..1 of the page) filled mid-gray."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    fill = MASK_FILL if out.mode == "L" else (MASK_FILL,) * 3
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([math.floor(x0 * w), math.floor(y0 * h), math.ceil(x1 * w) - 1, math.ceil(y1 * h) - 1], fill=fill)
    return out


class TaskParsePretrain(TaskReadPretrain):
    """Masked page parsing (Pix2Struct's objective for documents)."""

    name = "parse_pretrain"

    def task_tokens(self) -> list[str]:
        return [self.prompt, *BLOCK]

    def example_builder(self) -> MaskedParse:
        return MaskedParse(self.prompt, self.cfg.mask_share)


def sentinel(i: int) -> str:
    return f"<extra_id_{i}>"


@dataclass
class PrefixSplit:
    """Page text split at a random word boundary: the prefix to the text encoder, the rest to
    the decoder."""

    prompt: str

    def __call__(self, page: Page, rng: random.Random) -> list[Example]:
        words = page.text.split(" ")
        if len(words) < 2:
            raise SampleError("empty_page", "fewer than 2 words to split")
        cut = rng.randint(1, len(words) - 1)
        rest = " ".join(words[cut:])
        return [Example(self.prompt, rest, rest, header=" ".join(words[:cut]))]


@dataclass
class SpanCorruption:
    """T5 span corruption on the page's words: `noise_density` of them in spans of mean length
    `mean_span` replaced by sentinels in the encoder's text; the decoder writes each sentinel and
    its span."""

    prompt: str
    noise_density: float
    mean_span: float

    def __call__(self, page: Page, rng: random.Random) -> list[Example]:
        words = page.text.split()
        if len(words) < 2:
            raise SampleError("empty_page", "fewer than 2 words to corrupt")
        noise = min(len(words) - 1, max(1, round(len(words) * self.noise_density)))
        spans = min(NUM_SENTINELS, noise, len(words) - noise, max(1, round(noise / self.mean_span)))
        noise_lengths = _random_split(noise, spans, rng)
        keep_lengths = _random_split(len(words) - noise, spans, rng)
        source, target, at = [], [], 0
        for k, (keep, drop) in enumerate(zip(keep_lengths, noise_lengths)):
            source += words[at:at + keep] + [sentinel(k)]
            target += [sentinel(k)] + words[at + keep:at + keep + drop]
            at += keep + drop
        text = " ".join(target)
        return [Example(self.prompt, text, text, header=" ".join(source))]


def _random_split(total: int, parts: int, rng: random.Random) -> list[int]:
    """`total` as `parts` positive integers in random order (T5's random segmentation)."""
    cuts = sorted(rng.sample(range(1, total), parts - 1)) if parts > 1 else []
    edges = [0, *cuts, total]
    return [b - a for a, b in zip(edges, edges[1:])]


class _TextEncoderPretrain(TaskReadPretrain):
    """Objectives that give the page text to a text encoder: the pali family only."""

    families = ("pali",)


class TaskPrefixLMPretrain(_TextEncoderPretrain):
    name = "prefix_lm_pretrain"
    prompt = "<s_prefix>"

    def example_builder(self) -> PrefixSplit:
        return PrefixSplit(self.prompt)


class TaskSpanPretrain(_TextEncoderPretrain):
    name = "span_pretrain"
    prompt = "<s_span>"

    def task_tokens(self) -> list[str]:
        return [self.prompt, *(sentinel(i) for i in range(NUM_SENTINELS))]

    def example_builder(self) -> SpanCorruption:
        return SpanCorruption(self.prompt, self.cfg.span_noise_density, self.cfg.span_mean_length)
