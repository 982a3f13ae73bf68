"""Key-field parsing (SROIE, CORD): image -> the document's `fields` tree, written with field
tokens (pixparse.models.hf_code.fields), scored with Donut's field F1 and tree-edit-distance accuracy."""
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pixparse.data.decode import Page, SampleError
from pixparse.models.hf_code.fields import field_keys, field_tokens, text_to_tree, tree_to_text
from pixparse.tasks.base import DataVocabTask, Example
from pixparse.tasks.metrics import field_f1, ted_accuracy, ted_accuracy_one

logger = logging.getLogger(__name__)


@dataclass
class FieldExamples:
    """Page -> one example: target = the serialized `fields` of its document."""

    prompt: str

    def __call__(self, page: Page, rng: random.Random) -> list[Example]:
        fields = (page.anno or {}).get("fields")
        if not isinstance(fields, dict) or not fields:
            raise SampleError("missing_fields", "no 'fields' object in the annotation")
        return [Example(self.prompt, tree_to_text(fields), fields)]


def scan_annotations(source: str) -> Iterator[dict[str, Any]]:
    """The annotation JSON of every sample in the shards of `source` (JSON members only are
    parsed; unreadable ones are left to the loader to count)."""
    import json

    import webdataset as wds

    from pixparse.data.loader import expand_source

    urls = expand_source(source)
    for sample in wds.tarfile_samples([{"url": u} for u in urls], handler=wds.warn_and_continue):
        try:
            anno = json.loads(sample["json"])
        except (KeyError, ValueError, RecursionError):
            continue
        if isinstance(anno, dict):
            yield anno


def read_field_keys(source: str) -> set[str]:
    """Every key of every sample's `fields` in the shards of `source`."""
    keys: set[str] = set()
    for anno in scan_annotations(source):
        try:
            keys.update(field_keys(anno.get("fields", {})))
        except RecursionError:  # nested past Python's limit: the loader skips and counts the sample
            continue
    return keys


class TaskFinetuneFields(DataVocabTask):
    """Key-field parsing. The field tokens come from the training shards' `fields` (and from the
    checkpoint when fine-tuning goes on or evaluating)."""

    name = "finetune_fields"
    prompt = "<s_fields>"
    info_key = "field_keys"
    what = "field names ('fields' objects)"
    writer = "pixparse.app.write sroie|cord"

    @property
    def field_keys(self) -> set[str]:
        return self.values

    def read_values(self, source: str) -> set[str]:
        return read_field_keys(source)

    def value_tokens(self) -> list[str]:
        return field_tokens(self.values)

    def example_builder(self) -> FieldExamples:
        return FieldExamples(self.prompt)

    def postprocess(self, text: str) -> dict[str, Any]:
        return text_to_tree(text)

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return {"field_f1": field_f1(predictions, references),
                "ted_accuracy": ted_accuracy(predictions, references)}

    def sample_scores(self, prediction: Any, reference: Any) -> dict[str, float]:
        return {"field_f1": field_f1([prediction], [reference]),
                "ted_accuracy": ted_accuracy_one(prediction, reference)}


class TaskFinetuneSroie(TaskFinetuneFields):
    """SROIE receipts: company, date, address, total."""

    name = "finetune_sroie"
    prompt = "<s_sroie>"


class TaskFinetuneCord(TaskFinetuneFields):
    """CORD receipts: nested menu items (lists of dicts), sub-totals and totals."""

    name = "finetune_cord"
    prompt = "<s_cord>"
