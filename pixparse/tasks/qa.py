"""Document QA (DocVQA) and document classification (RVL-CDIP) as generation.

DocVQA: the question is in the prompt (<s_docvqa><s_question>...</s_question><s_answer>), the
loss is on the answer only, and the score is ANLS over the reference answers.
RVL-CDIP: the decoder writes one class token (<class_memo/>); the classes are read from the
training shards' `label`, like field names, and the score is accuracy.
"""
import logging
from dataclasses import dataclass
from typing import Any

from pixparse.data.decode import Page, SampleError
from pixparse.tasks.base import DataVocabTask, Example, TaskBase
from pixparse.tasks.fields import scan_annotations
from pixparse.tasks.metrics import anls, anls_one

logger = logging.getLogger(__name__)

QUESTION, ANSWER = ("<s_question>", "</s_question>"), ("<s_answer>", "</s_answer>")


@dataclass
class QAExamples:
    """Page -> one example per question of its document's `qa` list."""

    prompt: str

    def __call__(self, page: Page) -> list[Example]:
        qa = (page.anno or {}).get("qa")
        if not isinstance(qa, list) or not qa:
            raise SampleError("missing_qa", "no 'qa' list in the annotation")
        out = []
        for item in qa:
            answers = [str(a) for a in item.get("answers", []) if str(a).strip()]
            question = str(item.get("question", "")).strip()
            if question and answers:
                prompt = f"{self.prompt}{QUESTION[0]}{question}{QUESTION[1]}{ANSWER[0]}"
                out.append(Example(prompt, answers[0] + ANSWER[1], answers))
        if not out:
            raise SampleError("missing_qa", "no question with an answer")
        return out


class TaskCrullerFinetuneDocVQA(TaskBase):
    """Answer a question about the page."""

    name = "cruller_finetune_docvqa"
    prompt = "<s_docvqa>"

    def task_tokens(self) -> list[str]:
        return [self.prompt, *QUESTION, *ANSWER]

    def example_builder(self) -> QAExamples:
        return QAExamples(self.prompt)

    def postprocess(self, text: str) -> str:
        return text.split(ANSWER[1])[0].strip()

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        return {"anls": anls(predictions, references)}

    def sample_scores(self, prediction: Any, reference: Any) -> dict[str, float]:
        return {"anls": anls_one(prediction, reference)}


def class_token(label: str) -> str:
    return "<class_" + "_".join(str(label).split()) + "/>"


@dataclass
class ClassExamples:
    """Page -> one example whose target is its document's class token."""

    prompt: str

    def __call__(self, page: Page) -> list[Example]:
        label = (page.anno or {}).get("label")
        if not isinstance(label, str) or not label.strip():
            raise SampleError("missing_label", "no 'label' in the annotation")
        return [Example(self.prompt, class_token(label), label)]


class TaskCrullerFinetuneRvlcdip(DataVocabTask):
    """Classify the page: one generated class token."""

    name = "cruller_finetune_rvlcdip"
    prompt = "<s_rvlcdip>"
    info_key = "labels"
    what = "classes ('label' values)"
    writer = "pixparse.app.write rvl_cdip"

    @property
    def labels(self) -> set[str]:
        return self.values

    def read_values(self, source: str) -> set[str]:
        return {str(a["label"]) for a in scan_annotations(source) if a.get("label")}

    def value_tokens(self) -> list[str]:
        return [class_token(label) for label in sorted(self.values)]

    def example_builder(self) -> ClassExamples:
        return ClassExamples(self.prompt)

    def postprocess(self, text: str) -> str:
        by_token = {class_token(label): label for label in self.labels}
        return by_token.get(text.strip(), text.strip())

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        hits = sum(p == r for p, r in zip(predictions, references, strict=True))
        return {"accuracy": hits / len(references) if references else 0.0}

    def sample_scores(self, prediction: Any, reference: Any) -> dict[str, float]:
        return {"accuracy": float(prediction == reference)}
