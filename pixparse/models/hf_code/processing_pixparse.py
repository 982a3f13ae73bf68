"""A pixparse export's processor: its image processor, its tokenizer and the task's decoder prompt
(shipped inside every Hugging Face export; it never imports pixparse).

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(images=page)       # pixel_values, decoder_input_ids (the task's prompt)
    ids = model.generate(**inputs)        # VisionEncoderDecoderModel
    text = processor.batch_decode(ids[:, inputs["decoder_input_ids"].shape[1]:])[0]
    fields = processor.to_fields(text)    # key-field models (SROIE, CORD): the fields tree
"""
from typing import Any

import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .fields import text_to_tree


class PixparseProcessor(ProcessorMixin):
    def __init__(self, image_processor: Any = None, tokenizer: Any = None, prompt: str = "", **kwargs: Any) -> None:
        self.prompt = prompt  # the task token the decoder starts from (e.g. <s_pretrain>)
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images: Any = None, text: str | None = None, **kwargs: Any) -> BatchFeature:
        """Pages -> pixel_values, and the decoder prompt as decoder_input_ids: the task's prompt,
        or `text`, a whole prompt as the task writes it (a question: see docs/tasks.md)."""
        out = dict(self.image_processor(images, return_tensors="pt"))
        ids = self.tokenizer(self.prompt if text is None else text, add_special_tokens=False).input_ids
        out["decoder_input_ids"] = torch.tensor([ids] * out["pixel_values"].shape[0], dtype=torch.long)
        return BatchFeature(out)

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        """Generated ids (the prompt cut off) -> texts: cut at eos, pad dropped, the task's own
        tokens (e.g. field tokens) kept, as pixparse's eval writes them."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        texts = []
        for row in (sequences.tolist() if hasattr(sequences, "tolist") else sequences):
            row = row[: row.index(eos)] if eos in row else row
            texts.append(self.tokenizer.decode([i for i in row if i != pad], skip_special_tokens=False))
        return texts

    def to_fields(self, text: str) -> dict[str, Any]:
        """A key-field model's text (field tokens) -> the fields tree, as pixparse's eval parses it."""
        return text_to_tree(text)
