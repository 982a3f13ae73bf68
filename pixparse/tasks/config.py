"""Task (objective + model + optimizer) configuration. Imports only the stdlib."""
from dataclasses import dataclass, field
from typing import Literal


@dataclass(kw_only=True)
class OptimConfig:
    learning_rate: float = 3e-4
    """Peak learning rate, reached at the end of warmup."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    eps: float = 1e-6
    """AdamW epsilon."""
    weight_decay: float = 0.02
    """Decoupled weight decay; norms, biases, embeddings and position tokens get none."""
    clip_grad_value: float | None = None
    """Gradient-norm clip. Owned by the DeepSpeed JSON ("gradient_clipping"); set here only to
    fill an "auto" there, and it must agree with a number there."""
    clip_grad_mode: Literal["norm"] = "norm"
    """Only global-norm clipping is supported (what DeepSpeed implements)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    """LR decay after warmup: cosine or linear to --task.opt.min_lr_ratio at the end, none, or 'wsd'
    (warmup-stable-decay): the peak LR until the last --task.opt.decay_fraction of the steps, then
    linear to min_lr_ratio (a run can go on at the peak and decay only at its end)."""
    decay_fraction: float = 0.2
    """'wsd': the share of the run's steps the final decay takes."""
    schedule_unit: Literal["step", "interval"] = "step"
    """Update the LR every optimizer step, or once per interval (a staircase)."""
    layer_decay: float | None = None
    """Layer-wise LR decay of the image encoder (e.g. 0.75: each block down gets 0.75x the LR
    of the one above); unset: the same LR everywhere."""
    min_lr_ratio: float = 0.0
    """Final LR as a fraction of the peak."""

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"--task.opt.learning_rate must be > 0, got {self.learning_rate}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"--task.opt.betas must be in [0, 1), got {list(self.betas)}")
        if self.grad_accum_steps <= 0:
            raise ValueError(f"--task.opt.grad_accum_steps must be > 0, got {self.grad_accum_steps}")
        if self.clip_grad_value is not None and self.clip_grad_value <= 0:
            raise ValueError(
                f"--task.opt.clip_grad_value must be > 0 (or unset), got {self.clip_grad_value}"
            )
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"--task.opt.layer_decay must be in (0, 1], got {self.layer_decay}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"--task.opt.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"--task.opt.decay_fraction must be in (0, 1], got {self.decay_fraction}")


# huggingface/pixparse named its tasks after its model (Cruller); pixparse names the objective
# (each trains every family) and takes the old names as aliases, on the command line and in the
# `task` recorded by checkpoints and exports written before the rename.
TASK_ALIASES = {"cruller_pretrain": "read_pretrain", "cruller_finetune_sroie": "finetune_sroie",
                "cruller_finetune_cord": "finetune_cord", "cruller_finetune_docvqa": "finetune_docvqa",
                "cruller_finetune_rvlcdip": "finetune_rvlcdip", "cruller_finetune_xent": "finetune_xent"}


def canonical_task_name(name: str) -> str:
    """A task name or huggingface/pixparse alias -> pixparse's name."""
    return TASK_ALIASES.get(name, name)


@dataclass(kw_only=True)
class ObjectiveConfig:
    """What the eval app takes of the task: the objective and how it generates and is scored (the
    checkpoint brings the model, tokenizer and input size)."""

    name: Literal["read_pretrain", "finetune_sroie", "finetune_cord", "finetune_docvqa", "finetune_rvlcdip",
                  "finetune_xent", "parse_pretrain", "prefix_lm_pretrain", "span_pretrain",
                  "cruller_pretrain", "cruller_finetune_sroie", "cruller_finetune_cord", "cruller_finetune_docvqa",
                  "cruller_finetune_rvlcdip", "cruller_finetune_xent"] = "read_pretrain"
    """Objective (each trains every model family it fits; huggingface/pixparse's `cruller_pretrain`
    and `cruller_finetune_<set>` are other names of `read_pretrain` and `finetune_<set>`).
    'read_pretrain': read the page (write its text lines; CER/WER).
    'finetune_sroie' / 'finetune_cord': key-field parsing of receipts (the shards'
    `fields` written with field tokens read from the training shards; field F1 and tree-edit-distance
    accuracy). 'finetune_docvqa': answer the question in the prompt (the shards' `qa`; ANLS).
    'finetune_rvlcdip': one class token for the page (the shards' `label`; accuracy).
    'finetune_xent': the same classes from a linear head on the pooled image-encoder
    features, cross-entropy (the decoder frozen; accuracy). 'parse_pretrain': Pix2Struct's
    objective for documents: --task.mask_share of the text lines masked out of the image, the
    model writes the page in blocks of lines, masked text included (CER). 'prefix_lm_pretrain' /
    'span_pretrain' (pali presets): a text encoder reads the image and the page text's start /
    the text with word spans replaced by sentinels; the decoder writes the rest / the spans."""
    max_length: int | None = None
    """Longest target in tokens, task token included. Unset: the preset's decoder max length."""
    max_new_tokens: int | None = None
    """Longest generated output in evaluation. Unset: --task.max_length minus the prompt."""
    num_beams: int = 1
    """Beam width of generation in evaluation (1: greedy)."""
    mask_share: float = 0.5
    """parse_pretrain: share of the page's boxed text lines masked in the image (Pix2Struct: 0.5)."""
    span_noise_density: float = 0.15
    """span_pretrain: share of the page's words replaced by sentinel spans (T5: 0.15)."""
    span_mean_length: float = 3.0
    """span_pretrain: mean span length in words (T5: 3)."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] | None = None
    """Compute precision. Training: fills the DeepSpeed JSON's precision where it sets none (or
    "auto"), and must agree with one it sets (a clash is an error naming both). Evaluation: the
    model runs in it. 'auto': bfloat16 where the device computes it natively (CUDA with bf16, a CPU
    with AMX or AVX512-BF16), float32 elsewhere; the choice and the reason are logged. Unset:
    the JSON's precision (training), float32 (evaluation)."""

    def __post_init__(self) -> None:
        self.name = canonical_task_name(self.name)
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"--task.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 <= self.mask_share <= 1.0:
            raise ValueError(f"--task.mask_share must be in [0, 1], got {self.mask_share}")
        if not 0.0 < self.span_noise_density < 1.0:
            raise ValueError(f"--task.span_noise_density must be in (0, 1), got {self.span_noise_density}")
        if self.span_mean_length < 1.0:
            raise ValueError(f"--task.span_mean_length must be >= 1, got {self.span_mean_length}")
        if self.num_beams < 1:
            raise ValueError(f"--task.num_beams must be >= 1, got {self.num_beams}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"--task.max_length must be >= 2, got {self.max_length}")


@dataclass(kw_only=True)
class TaskConfig(ObjectiveConfig):
    """The objective plus the model, its initialization and the optimizer (training)."""

    model_name: str = "cruller_base"
    """Model preset name (see pixparse.models.list_presets()) or a path to a preset JSON."""
    init_from: str | None = None
    """Start from a previous run's export folder or checkpoint tag: its preset, tokenizer and
    weights (--task.model_name is then ignored); new task tokens are added, embeddings resized."""
    pretrained: bool = False
    """Load pretrained encoder/decoder weights named by the preset (timm / HF hub or local)."""
    tokenizer: str | None = None
    """'byte' (built in), a SentencePiece .model, a tokenizer.json, an HF folder or hub name.
    Unset: the preset's default tokenizer."""
    image_size: tuple[int, int] | None = None
    """The image encoder's input (height, width) instead of the preset's or --task.init_from's (ViT
    and pixparse_conv_vit trunks): with --task.init_from, position embeddings are resampled to the
    new grid, so a line reader (32x256) goes on to blocks and pages. Unset: as the preset."""
    encoder_grad_checkpointing: bool = False
    """Recompute image-encoder blocks in backward instead of storing their activations."""
    decoder_grad_checkpointing: bool = False
    """Recompute text-decoder layers in backward instead of storing their activations."""
    opt: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and LR schedule."""
    num_intervals: int = 30
    """Intervals to train; an interval is the span between checkpoints (num_samples samples)."""
    num_warmup_intervals: float | None = None
    """LR warmup length in intervals (may be fractional). Unset: 10% of --task.num_intervals."""
    ctc_weight: float = 0.0
    """read_pretrain on cruller presets: weight of an auxiliary CTC loss on the image encoder's
    tokens (a linear head, trained with the task and left out of exports). It shows the encoder
    characters directly, so reading starts earlier; it assumes the tokens run left to right, as
    pixparse_conv_vit's column tokens do (reader presets). 0: off."""

    @property
    def warmup_intervals(self) -> float:
        if self.num_warmup_intervals is None:
            return 0.1 * self.num_intervals
        return self.num_warmup_intervals

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_intervals <= 0:
            raise ValueError(f"--task.num_intervals must be > 0, got {self.num_intervals}")
        if self.num_warmup_intervals is not None and not 0 <= self.num_warmup_intervals <= self.num_intervals:
            raise ValueError(
                f"--task.num_warmup_intervals must be in [0, --task.num_intervals="
                f"{self.num_intervals}], got {self.num_warmup_intervals}"
            )
        if self.ctc_weight < 0:
            raise ValueError(f"--task.ctc_weight must be >= 0, got {self.ctc_weight}")
        if self.ctc_weight and self.name != "read_pretrain":
            raise ValueError(f"--task.ctc_weight is an auxiliary loss of read_pretrain, not {self.name}")
        if self.init_from is not None and (self.tokenizer is not None or self.pretrained):
            raise ValueError(
                "--task.init_from brings its own tokenizer and weights: drop --task.tokenizer and "
                "--task.pretrained"
            )
