"""The task base: one class per objective owns its model build, tokens, preprocessing, loss,
generation settings, post-processing and metrics. Fine-tune and eval of an objective are the
same class; the engine calls only the hooks below.

A task turns each decoded page into Examples (prompt, target, reference): the decoder is given
the prompt and learns the target; eval generates from the prompt and scores the parsed output
against the reference.
"""
import dataclasses
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pixparse.data.config import DataLoaderConfig
from pixparse.data.decode import Page, SampleError, decode_document_pages
from pixparse.data.loader import ROLLED_KEY
from pixparse.data.patches import PatchPage
from pixparse.data.tokenizer import add_task_tokens, create_tokenizer
from pixparse.data.transforms import DocAugment, ResizePad, TextTargets
from pixparse.models import Cruller, create_model, get_model_config
from pixparse.models.config import ModelConfig
from pixparse.models.export import load_weights, read_source
from pixparse.tasks.config import TaskConfig
from pixparse.tasks.family import Family, get_family

logger = logging.getLogger(__name__)


def token_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token loss: logits (B, T, V) at t predict labels at t+1; -100 is ignored.

    Returns (loss: the mean over target tokens, or with reduction 'none' the (B, T-1) per-token
    losses, 0 where ignored; number of target tokens).
    """
    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100,
                           reduction=reduction)
    if reduction == "none":
        loss = loss.view(targets.shape)
    return loss, (targets != -100).sum()


@dataclass
class Example:
    prompt: str  # what the decoder is given (a task token, maybe a question)
    target: str  # what it learns to write
    reference: Any = None  # what eval scores the parsed output against
    # The prompt's content (a question, a text prefix) that a pixels-only model sees drawn above the
    # page and a PaLI model's text encoder reads; both give their decoder the task token only.
    # Task tokens stay out of the text encoder: a token that is the same in every sample becomes an
    # attention sink the decoder learns to read instead of the image (docs/tasks.md).
    header: str = ""


def with_image_size(model_cfg: ModelConfig, image_size: tuple[int, int] | None) -> ModelConfig:
    """The preset with --task.image_size as its encoder input size (as it is when unset)."""
    if image_size is None:
        return model_cfg
    if model_cfg.image_encoder.max_patches:
        raise ValueError("--task.image_size does not apply to pix2struct presets (they take any size up to "
                         "max_patches)")
    encoder = dataclasses.replace(model_cfg.image_encoder, image_size=tuple(image_size))
    return dataclasses.replace(model_cfg, image_encoder=encoder)


def resample_pos_embed(weights: dict[str, torch.Tensor], model: nn.Module, source_size: tuple[int, int] | None,
                       image_size: tuple[int, int] | None) -> dict[str, torch.Tensor]:
    """`weights` of a model built at `source_size`, with the image encoder's position embedding
    resampled (bicubic, prefix tokens kept) to `model`'s grid when --task.image_size changed it."""
    key = "image_encoder.trunk.pos_embed"
    if image_size is None or source_size is None or key not in weights:
        return weights
    from timm.layers import resample_abs_pos_embed

    trunk = model.image_encoder.trunk
    grid = tuple(trunk.patch_embed.grid_size)
    old = tuple(round(g * s / n) for g, s, n in zip(grid, source_size, image_size))
    weights = dict(weights)
    weights[key] = resample_abs_pos_embed(weights[key], new_size=list(grid), old_size=list(old),
                                          num_prefix_tokens=0 if trunk.no_embed_class else trunk.num_prefix_tokens)
    logger.info("image size %s -> %s: position embeddings resampled from a %s to a %s grid", source_size,
                image_size, old, grid)
    return weights


class _Preprocess:
    """Worker-side: sample -> [{'image' (or 'page', 'budget'), 'input_ids', 'prompt_length'
    (, 'prompt_ids')(, 'meta')}] (picklable: holds the tokenizer, the family and the task's
    example builder, never the model)."""

    def __init__(self, family: Family, image_transform: ResizePad | PatchPage, text: TextTargets, page_sampling: str,
                 examples: Callable[[Page, random.Random], list[Example]], with_meta: bool, need_text: bool = True,
                 max_target_chars: int = 100_000, max_pixels: int | None = None, box_format: str = "auto") -> None:
        self.family = family
        self.box_format = box_format
        self.image_transform = image_transform
        self.max_pixels = max_pixels
        self.max_target_chars = max_target_chars
        self.need_text = need_text
        self.text = text
        self.page_sampling = page_sampling
        self.examples = examples
        self.with_meta = with_meta

    def __call__(self, sample: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
        pages = decode_document_pages(
            sample, self.page_sampling, rng,
            target_size=(self.image_transform.height, self.image_transform.width),
            grayscale=self.image_transform.image_fmt == "L",
            need_text=self.need_text,
            draft=not self.image_transform.exact,
            max_pixels=self.max_pixels,
            box_format=self.box_format,
        )
        out = []
        for page in pages:
            examples = self.examples(page, rng)  # may replace page.image (a masked copy)
            if not examples:
                continue
            longest = max(len(ex.target) for ex in examples)
            if longest > self.max_target_chars:
                raise SampleError("target_too_long", f"a target of {longest} characters, over "
                                                     f"--data.*.max_target_chars={self.max_target_chars}")
            images = self.family.page_inputs(self.image_transform, page.image, [ex.header for ex in examples], rng)
            for j, (ex, image) in enumerate(zip(examples, images)):
                ids, prompt_length = self.text(ex.prompt, ex.target)
                item = {"input_ids": ids, "prompt_length": prompt_length, **image,
                        **self.family.prompt_inputs(self.text, ex.header)}
                if self.with_meta:  # a unique key per example: page and question index when several
                    key = f"{sample.get('__key__', '?')}" + (f"/p{page.page_index}" if page.page_index else "") \
                        + (f"/{j}" if len(examples) > 1 else "")
                    item["meta"] = {"key": key, "url": sample.get("__url__", "?"), "reference": ex.reference}
                out.append(item)
        return out


class TaskBase(nn.Module):
    """Model, tokenizer and objective. Subclasses set `name` and `prompt` and implement
    `example_builder` (and, for generative eval, `postprocess` and `score`)."""

    name: ClassVar[str]
    prompt: ClassVar[str]
    needs_page_text: ClassVar[bool] = False  # only pages with text lines are samples (reading targets)
    families: ClassVar[tuple[str, ...] | None] = None  # model families it trains (None: every one)
    train_dtype: str = "float32"  # the run's compute precision (set by the run): an export's default

    @classmethod
    def check_model(cls, model_cfg: ModelConfig, model_name: str) -> None:
        """Refuse a preset of a family this objective cannot train (before any process group)."""
        if cls.families is not None and model_cfg.type not in cls.families:
            raise ValueError(f"--task.name {cls.name} trains {'/'.join(cls.families)} presets, not "
                             f"{model_name!r} (type {model_cfg.type!r}); pick e.g. "
                             f"--task.model_name {cls.families[0]}_tiny")

    def __init__(self, cfg: TaskConfig, model_cfg: ModelConfig | None = None,
                 train_source: str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.setup_tokens(train_source)
        if cfg.init_from:
            self.model_cfg, self.tokenizer, info, weights = read_source(cfg.init_from)
            self.check_model(self.model_cfg, cfg.init_from)
            source_size = self.model_cfg.image_encoder.image_size
            self.model_cfg = with_image_size(self.model_cfg, cfg.image_size)
            self.restore_info(info)
            self.preset_name = info.get("model_name")
            self.model: Cruller = create_model(
                self.model_cfg, info["vocab_size"], info["pad_token_id"], info["eos_token_id"],
                num_classes=self.num_classes(),
            )
            self.load_init_weights(resample_pos_embed(weights(), self.model, source_size, cfg.image_size), info)
            logger.info("initialized from %s (%s)", cfg.init_from, info.get("task"))
            if add_task_tokens(self.tokenizer, self.task_tokens()):
                # HF resizing initializes the new rows around the mean of the old embeddings.
                self.model.text_decoder.model.resize_token_embeddings(len(self.tokenizer))
        else:
            info = {}
            # a preset file is named by its stem: my/cruller_large_6layers.json -> cruller_large_6layers
            self.preset_name = os.path.splitext(os.path.basename(cfg.model_name))[0]
            self.model_cfg = with_image_size(model_cfg or get_model_config(cfg.model_name), cfg.image_size)
            self.check_model(self.model_cfg, cfg.model_name)
            self.tokenizer = create_tokenizer(cfg.tokenizer or self.model_cfg.text_decoder.tokenizer)
            add_task_tokens(self.tokenizer, self.task_tokens())
            self.model = create_model(
                self.model_cfg,
                vocab_size=len(self.tokenizer),
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                pretrained=cfg.pretrained,
                num_classes=self.num_classes(),
            )
        # A checkpoint keeps the target length it was trained with (fine-tuning or evaluating it
        # with the preset's shorter default would cut its targets).
        trained_length = info.get("max_length") if cfg.init_from else None
        self.max_length = cfg.max_length or trained_length or self.model_cfg.text_decoder.max_length
        if self.max_length > self.model.text_decoder.max_positions:
            raise ValueError(
                f"--task.max_length={self.max_length} exceeds the decoder's "
                f"{self.model.text_decoder.max_positions} positions"
            )
        self.model.image_encoder.set_grad_checkpointing(cfg.encoder_grad_checkpointing)
        self.model.text_decoder.set_grad_checkpointing(cfg.decoder_grad_checkpointing)
        self.family = get_family(self.model_cfg, self.model)
        enc = self.model.image_encoder
        mean, std = enc.pretrained_cfg.get("mean", (0.5,)), enc.pretrained_cfg.get("std", (0.5,))
        if self.model_cfg.image_encoder.image_fmt == "L":
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        # (1, C, 1, 1) in the 0..255 pixel scale, so uint8 pixels normalize in one step
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1) * 255, persistent=False)

    # ----------------------------------------------------------------- hooks
    def setup_tokens(self, train_source: str | None) -> None:
        """Read what the task's tokens depend on (e.g. field names in the training data); runs
        before the tokenizer is built. Default: nothing."""

    def task_tokens(self) -> list[str]:
        """Tokens the tokenizer must hold as single pieces (prompt, field tokens)."""
        return [self.prompt]

    def restore_info(self, info: dict[str, Any]) -> None:
        """Take back what export_info() stored (a checkpoint or export being loaded)."""

    def num_classes(self) -> int:
        """Outputs of the model's linear classifier (0: none, the decoder writes the answer)."""
        return 0

    def load_init_weights(self, weights: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        """Load --task.init_from's weights into the freshly built model (strict)."""
        load_weights(self.model, weights)

    def example_builder(self) -> Callable[[Page, random.Random], list[Example]]:
        """A picklable callable: (decoded page, the sample's RNG) -> examples (runs in loader
        workers). It may replace page.image (an objective that masks the page)."""
        raise NotImplementedError

    def postprocess(self, text: str) -> Any:
        """Generated text -> the prediction the metric compares (default: the text)."""
        return text.strip()

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        """Dataset metrics of parsed predictions against references."""
        return {}

    def sample_scores(self, prediction: Any, reference: Any) -> dict[str, float]:
        """Per-sample scores written beside each prediction."""
        return {}

    # ----------------------------------------------------------------- data
    def preprocess(self, data_cfg: DataLoaderConfig, with_meta: bool = False) -> _Preprocess:
        augment = DocAugment() if data_cfg.image_pipeline == "doc_aug" else None
        min_patches = data_cfg.min_patches if isinstance(data_cfg, DataLoaderConfig) else None  # training only
        return _Preprocess(
            self.family,
            self.family.image_transform(augment, exact=data_cfg.decode == "exact", min_patches=min_patches),
            TextTargets(self.tokenizer, self.max_length, decoder_prompt=self.family.decoder_prompt),
            data_cfg.page_sampling,
            self.example_builder(),
            with_meta,
            self.needs_page_text,
            data_cfg.max_target_chars,
            data_cfg.max_image_pixels,
            data_cfg.box_format,
        )

    def collate(self, data_cfg: DataLoaderConfig) -> Callable:
        return self.family.collate(self.tokenizer.pad_token_id, data_cfg.pad_to_multiple_of,
                                   pack=data_cfg.pack_patches)

    def batch_stats(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Work in a (CPU) batch, for throughput: model FLOPs of one training step on it, image
        tokens and real text tokens."""
        return {
            "flops": self._flops_of_shape(self.family.work_shape(batch)),
            "image_tokens": self.family.image_tokens(batch, self.model),
            "text_tokens": float(batch["attention_mask"].sum()),
        }

    def _flops_of_shape(self, shape: tuple[int, ...]) -> float:
        """Model FLOPs of one training step on a batch of the family's work `shape`, by formula,
        remembered per shape: walking the model's blocks costs ~0.3 ms of Python, paid on every
        step otherwise, and batches repeat a few shapes. NaN: no formula for this trunk (conv)."""
        cache = self.__dict__.setdefault("_step_flops_by_shape", {})
        if shape not in cache:
            if len(cache) >= 4096:  # packed rows and padded lengths vary: keep it bounded
                cache.clear()
            try:
                cache[shape] = self.step_flops(shape)
            except NotImplementedError:  # TFLOP/s and MFU unknown
                cache[shape] = float("nan")
        return cache[shape]

    def step_flops(self, shape: tuple[int, ...]) -> float:
        """Model FLOPs of one training step on a batch of the family's work `shape`
        (NotImplementedError: no formula for this trunk). An objective that runs part of the
        model (a classifier head) counts that part."""
        return self.family.step_flops(self.model, shape)

    def synthetic_batch(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Random pixels and full-length random text: the worst case the loader can send (for
        patches: every page a full row of max_patches)."""
        ids = torch.randint(0, len(self.tokenizer), (batch_size, self.max_length), generator=generator)
        ids[:, 0] = self.tokenizer.convert_tokens_to_ids(self.prompt)
        labels = ids.clone()
        labels[:, 0] = -100
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                **self.family.synthetic_inputs(batch_size, ids, generator)}

    # ----------------------------------------------------------------- export
    def export_info(self) -> dict[str, Any]:
        """What a loader of the exported weights needs besides the preset."""
        tok = self.tokenizer
        return {
            "task": self.name,
            "model_name": self.preset_name,
            "prompt": self.prompt,
            "vocab_size": len(tok),
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": tok.eos_token_id,
            "decoder_start_token_id": tok.convert_tokens_to_ids(self.prompt),
            "max_length": self.max_length,
            "train_dtype": self.train_dtype,
            "pixel_mean": self.pixel_mean.flatten().tolist(),
            "pixel_std": self.pixel_std.flatten().tolist(),
        }

    def save_assets(self, out_dir: str) -> None:
        """Model preset, tokenizer and task info beside a checkpoint, so it exports on its own."""
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "model_config.json"), "w") as f:
            json.dump({**self.model_cfg.to_dict(), "pixparse": self.export_info()}, f, indent=2)
        self.tokenizer.save_pretrained(os.path.join(out_dir, "tokenizer"))

    # ----------------------------------------------------------------- model
    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        # DeepSpeed casts parameters (not buffers) to bf16/fp16: the encoder's dtype is the compute dtype.
        dtype = next(self.model.image_encoder.parameters()).dtype
        return ((image.float() - self.pixel_mean) / self.pixel_std).to(dtype)

    def pixels(self, batch: dict[str, torch.Tensor], roll: bool = False) -> Any:
        """What the model's encoder takes, normalized (see Family.pixels). `roll`: each sample gets
        the next one's page (rolled by one), for the image-dependence check."""
        return self.family.pixels(batch, self.normalize, roll)

    def page_image(self, batch: dict[str, Any], index: int) -> torch.Tensor:
        """Sample `index`'s page as the model saw it, (C, H, W) uint8 (for galleries)."""
        return self.family.page_image(batch, index)

    def text_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Text the encoder side reads besides the pixels (pali: the prompt)."""
        return self.family.text_inputs(batch)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.model(self.pixels(batch), batch["input_ids"], batch["attention_mask"],
                            **self.text_inputs(batch))  # (B, T_txt, V)
        loss, num_tokens = token_cross_entropy(logits, batch["labels"])
        return {"loss": loss, "num_target_tokens": num_tokens}

    @torch.no_grad()
    def token_losses(self, batch: dict[str, torch.Tensor], roll: bool = False) -> torch.Tensor:
        """Summed target-token loss per sample (B,); `roll`: with another sample's page instead (the
        batch's 'rolled' pixels where the eval loader paired samples, else the next sample's)."""
        if roll and ROLLED_KEY in batch:
            batch, roll = batch[ROLLED_KEY], False
        logits = self.model(self.pixels(batch, roll), batch["input_ids"], batch["attention_mask"],
                            **self.text_inputs(batch))
        losses, _ = token_cross_entropy(logits, batch["labels"], reduction="none")
        return losses.sum(dim=1)

    @torch.no_grad()
    def eval_batch(self, batch: dict[str, torch.Tensor], max_new_tokens: int | None,
                   synced: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """One eval batch -> (summed target loss per sample with its own image (B,), the same with
        the batch's images rolled by one (B,), target tokens per sample (B,), output texts)."""
        own = self.token_losses(batch).float()
        rolled = self.token_losses(batch, roll=True).float()
        num_tokens = (batch["labels"][:, 1:] != -100).sum(dim=1)
        prompts = [row[:n].tolist() for row, n in zip(batch["input_ids"], batch["prompt_length"].tolist())]
        new = max_new_tokens or self.max_length - max(len(p) for p in prompts)
        texts = [self.decode(ids) for ids in self.generate(
            batch, prompts, new, num_beams=self.cfg.num_beams, synced=synced)]
        return own, rolled, num_tokens, texts

    @torch.no_grad()
    def generate(
        self,
        batch: dict[str, torch.Tensor],
        prompts: list[list[int]],
        max_new_tokens: int,
        num_beams: int = 1,
        synced: bool = False,
        stop_at_eos: bool = True,
    ) -> list[list[int]]:
        """Continue each decoder prompt from its page (the batch's pixels, and its prompt_ids for a
        text encoder); returns the new token ids per sample, cut at eos.

        The encoder runs once; the decoder caches its keys/values (see the text decoder's
        generate). Samples stop at eos; prompts of equal length run as one batch (`stop_at_eos`
        False: always max_new_tokens, for timing).
        `synced` (every rank of a ZeRO-3 job calls this the same
        number of times) keeps each rank stepping until all are done, as ZeRO-3 forwards are
        collective; a rank with fewer prompt lengths than another makes dummy calls to match.
        """
        from transformers import GenerationConfig

        memory, memory_mask = self.model.encode(self.pixels(batch), **self.text_inputs(batch))  # (B, N, C_dec)
        device = memory.device
        eos = self.tokenizer.eos_token_id if stop_at_eos else None
        pad = self.tokenizer.pad_token_id
        # Our settings only: the decoder's own defaults (BART's forced_eos_token_id=2, ...) would
        # otherwise apply.
        config = GenerationConfig(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                  eos_token_id=eos, pad_token_id=pad, use_cache=True)
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(len(p), []).append(i)
        out: list[list[int]] = [[] for _ in prompts]
        calls = sorted(groups.items())
        if synced:  # every rank makes as many generate calls as the rank with the most groups
            import torch.distributed as dist

            most = torch.tensor([len(calls)], device=device)
            dist.all_reduce(most, op=dist.ReduceOp.MAX)
            calls += [(calls[0][0], [])] * (int(most.item()) - len(calls))  # dummies, discarded
        for length, index in calls:
            rows = index or groups[calls[0][0]][:1]
            ids = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)
            generated = self.model.text_decoder.generate(
                ids, memory[rows], None if memory_mask is None else memory_mask[rows], config, synced=synced,
            )[:, length:]
            for i, row in zip(index, generated.tolist()):
                out[i] = row[: row.index(eos)] if eos is not None and eos in row else row
        return out

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text, keeping the task's own tokens (field tokens), dropping pad/eos."""
        drop = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        return self.tokenizer.decode([i for i in ids if i not in drop], skip_special_tokens=False)


class DataVocabTask(TaskBase):
    """A task whose extra tokens name values found in the training data (field names, classes):
    read from --data.train.source, never from a hand-written list, and carried by checkpoints
    and exports (under `info_key`) so that fine-tuning on and evaluation get the same tokens."""

    info_key: ClassVar[str]  # export_info key, e.g. 'field_keys'
    what: ClassVar[str]  # what the values are, for messages: 'field names'
    writer: ClassVar[str]  # how to write shards that have them

    def read_values(self, source: str) -> set[str]:
        """The values in the shards of `source`."""
        raise NotImplementedError

    def value_tokens(self) -> list[str]:
        """The tokens of self.values."""
        raise NotImplementedError

    def setup_tokens(self, train_source: str | None) -> None:
        self.values: set[str] = set()
        if train_source:
            self.values = self.read_values(train_source)
            if not self.values:
                raise ValueError(f"--task.name {self.name}: no sample in --data.train.source {train_source!r} "
                                 f"has {self.what}; write the shards with {self.writer}")
            logger.info("%d %s from the training data: %s", len(self.values), self.what, sorted(self.values))
        elif not self.cfg.init_from:
            raise ValueError(f"--task.name {self.name} reads its {self.what} from --data.train.source or "
                             f"from --task.init_from; give one")

    def restore_info(self, info: dict[str, Any]) -> None:
        self.values |= set(info.get(self.info_key, []))

    def task_tokens(self) -> list[str]:
        return [self.prompt] + self.value_tokens()

    def export_info(self) -> dict[str, Any]:
        return {**super().export_info(), self.info_key: sorted(self.values)}
