"""OCR-reading pretraining (Donut's 'read the page' objective): image -> page text."""
from dataclasses import dataclass

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

    def example_builder(self) -> PageText:
        return PageText(self.prompt)
