"""Document QA (DocVQA) and document classification (RVL-CDIP) as generation.

DocVQA: the question is in the prompt (<s_docvqa><s_question>...</s_question><s_answer>), the
loss is on the answer only, and the score is ANLS over the reference answers.
RVL-CDIP: the decoder writes one class token (<class_memo/>); the classes are read from the
training shards' `label`, like field names, and the score is accuracy.
Xent: the same classes from a linear classifier on the mean-pooled image-encoder tokens
(cross-entropy over classes; the decoder is not used and stays frozen).
"""
import logging
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pixparse.data.decode import Page, SampleError
from pixparse.models.export import load_weights
from pixparse.models.flops import classifier_flops
from pixparse.tasks.base import DataVocabTask, Example, TaskBase
from pixparse.tasks.fields import scan_annotations
from pixparse.tasks.metrics import anls, anls_one

logger = logging.getLogger(__name__)

QUESTION, ANSWER = ("<s_question>", "</s_question>"), ("<s_answer>", "</s_answer>")


@dataclass
class QAExamples:
    """Page -> one example per question of its document's `qa` list."""

    prompt: str

    def __call__(self, page: Page, rng: random.Random) -> list[Example]:
        qa = (page.anno or {}).get("qa")
        if not isinstance(qa, list) or not qa:
            raise SampleError("missing_qa", "no 'qa' list in the annotation")
        out = []
        for item in qa:
            answers = [str(a) for a in item.get("answers", []) if str(a).strip()]
            question = str(item.get("question", "")).strip()
            if question and answers:
                prompt = f"{self.prompt}{QUESTION[0]}{question}{QUESTION[1]}{ANSWER[0]}"
                out.append(Example(prompt, answers[0] + ANSWER[1], answers, header=question))
        if not out:
            raise SampleError("missing_qa", "no question with an answer")
        return out


class TaskFinetuneDocVQA(TaskBase):
    """Answer a question about the page."""

    name = "finetune_docvqa"
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

    def __call__(self, page: Page, rng: random.Random) -> list[Example]:
        label = (page.anno or {}).get("label")
        if not isinstance(label, str) or not label.strip():
            raise SampleError("missing_label", "no 'label' in the annotation")
        return [Example(self.prompt, class_token(label), label)]


class TaskFinetuneRvlcdip(DataVocabTask):
    """Classify the page: one generated class token."""

    name = "finetune_rvlcdip"
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


class TaskFinetuneXent(TaskFinetuneRvlcdip):
    """Classify the page with a linear head on the pooled image-encoder features (any encoder
    width), trained with cross-entropy; the text decoder is frozen and unused. Examples are those
    of the RVL-CDIP task: the class is the first target token, mapped to its class index here."""

    name = "finetune_xent"
    families = ("cruller",)  # the linear head sits on a fixed-size encoder's pooled tokens
    prompt = "<s_xent>"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model.text_decoder.requires_grad_(False)
        self.model.enc_to_dec_proj.requires_grad_(False)
        self.classes = sorted(self.labels)
        ids = self.tokenizer.convert_tokens_to_ids([class_token(c) for c in self.classes])
        lookup = torch.full((len(self.tokenizer),), -100, dtype=torch.long)
        lookup[torch.tensor(ids)] = torch.arange(len(ids))
        self.register_buffer("class_of_token", lookup, persistent=False)  # token id -> class index

    def num_classes(self) -> int:
        return len(self.values)

    def load_init_weights(self, weights: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        """A pretrained reader has no classifier and a classifier of other classes does not fit:
        both start with a fresh head (logged); the rest loads strictly."""
        if info.get("num_classes") and sorted(info.get(self.info_key, [])) == sorted(self.values):
            load_weights(self.model, weights)
            return
        logger.info("new classifier head for %d classes (the checkpoint's: %s)", self.num_classes(),
                    info.get(self.info_key) if info.get("num_classes") else "none")
        fresh = {k: v for k, v in self.model.state_dict().items() if k.startswith("classifier.")}
        load_weights(self.model, {**{k: v for k, v in weights.items() if not k.startswith("classifier.")}, **fresh})

    def export_info(self) -> dict[str, Any]:
        return {**super().export_info(), "num_classes": self.num_classes()}

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class index per sample: its first target token (after the prompt) mapped to a class."""
        first = batch["input_ids"].gather(1, batch["prompt_length"].view(-1, 1)).squeeze(1)
        target = self.class_of_token[first]
        if (target < 0).any():
            raise ValueError("a sample's target is not a class token of this task")
        return target

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.model.classify(self.normalize(batch["image"]))
        return {"loss": F.cross_entropy(logits.float(), self.targets(batch)),
                "num_target_tokens": torch.tensor(logits.shape[0], device=logits.device)}

    @torch.no_grad()
    def eval_batch(self, batch: dict[str, torch.Tensor], max_new_tokens: int | None,
                   synced: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        target = self.targets(batch)
        pixels = self.normalize(batch["image"])
        logits = self.model.classify(pixels).float()
        rolled = self.model.classify(pixels.roll(1, dims=0)).float()
        texts = [class_token(self.classes[i]) for i in logits.argmax(dim=1).tolist()]
        return (F.cross_entropy(logits, target, reduction="none"), F.cross_entropy(rolled, target, reduction="none"),
                torch.ones_like(target), texts)

    def step_flops(self, shape: tuple[int, ...]) -> float:
        return float(classifier_flops(self.model)[1] * shape[0])  # shape[0]: the samples

    def batch_stats(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        return {**super().batch_stats(batch), "text_tokens": 0.0}  # the decoder is not run
