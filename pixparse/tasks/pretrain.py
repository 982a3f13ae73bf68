"""OCR-reading pretraining (Donut's 'read the page' objective): image -> page text."""
from dataclasses import dataclass
from typing import Any

from pixparse.data.decode import Page
from pixparse.tasks.base import Example, TaskBase

PRETRAIN_PROMPT = "<s_pretrain>"


@dataclass
class PageText:
    """Page -> one example whose target (and reference) is the page's text, line by line."""

    prompt: str

    def __call__(self, page: Page) -> list[Example]:
        return [Example(self.prompt, page.text, page.text)]


class TaskCrullerPretrain(TaskBase):
    """Read the page: learn to write every text line of the page in reading order."""

    name = "cruller_pretrain"
    prompt = PRETRAIN_PROMPT
    needs_page_text = True

    def example_builder(self) -> PageText:
        return PageText(self.prompt)

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return reading_scores(predictions, references)

    def sample_scores(self, prediction: Any, reference: Any) -> dict[str, float]:
        return reading_scores([prediction], [reference])


def reading_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """CER and WER over the dataset (jiwer: total edits / total reference characters or words).
    Normalization: none beyond what the targets already are (lines joined by newlines, which
    count as characters for CER and as word breaks for WER); empty references are left out."""
    import jiwer

    pairs = [(r, p) for r, p in zip(references, predictions, strict=True) if r.strip()]
    if not pairs:
        return {}
    refs, preds = [r for r, _ in pairs], [p for _, p in pairs]
    return {"cer": jiwer.cer(refs, preds), "wer": jiwer.wer(refs, preds)}
