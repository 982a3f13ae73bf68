"""Data configuration. Imports only the stdlib."""
from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class _PageSettings:
    """How a page becomes model input: the settings training and evaluation data share."""

    pad_to_multiple_of: int = 8
    """Pad text batches to a multiple of this length (1 pads to the longest only)."""
    max_target_chars: int = 100_000
    """A sample whose target (or reference) text is longer is skipped as corrupt ('target_too_long';
    a dense page has ~10,000 characters). Longer targets that fit are cut to --task.max_length tokens."""
    decode: Literal["fast", "exact"] = "exact"
    """Image decode quality. 'exact': full decode, then the antialiased bicubic resize (the
    reference pipeline's quality). 'fast': JPEGs (and scanned PDF pages) decode at a reduced DCT
    scale near the model's size, then the same resize: about 1.5x exact's pages/s on JPEG and
    scanned PDF (the same on TIFF/PNG), 11 dB lower PSNR on full pages at 576x448; for loader-bound
    runs. exact is the default by the receipt learning check (docs/data.md)."""
    max_image_pixels: int = 50_000_000
    """A page image of more pixels (width x height, read from its header before decoding) is
    skipped ('image_too_large'); a 600 dpi letter page has 34M. Bounds a worker's memory per sample."""
    max_sample_bytes: int = 256 * 2**20
    """A sample whose tar members hold more bytes (decompressed, read from the tar headers before
    reading) is skipped ('sample_too_large'). Bounds a worker's memory per sample."""
    pack_patches: bool = True
    """Pixels-only presets (pix2struct): pack the patch sequences of several pages into each row of
    max_patches (attention kept inside each page); false pads every page to its own row, as
    Pix2Struct does (for comparison: more rows, more padding)."""
    box_format: Literal["auto", "xyxy", "xywh"] = "auto"
    """Line boxes of the shards' JSON (0..1 of the page; read by parse_pretrain): 'xyxy'
    [x0, y0, x1, y1] (what pixparse's writers write), 'xywh' [x, y, width, height] (the public
    pixparse/pdfa-eng-wds and pixparse/idl-wds shards). 'auto': xywh for a page where any box read
    as xyxy would end before it starts, else xyxy (docs/data.md)."""

    def check(self, scope: str) -> None:
        """The shared checks; `scope` names the flags ('train', 'eval')."""
        if self.pad_to_multiple_of < 1:
            raise ValueError(f"--data.{scope}.pad_to_multiple_of must be >= 1, got {self.pad_to_multiple_of}")
        if self.max_image_pixels <= 0:
            raise ValueError(f"--data.{scope}.max_image_pixels must be > 0, got {self.max_image_pixels}")
        if self.max_sample_bytes <= 0:
            raise ValueError(f"--data.{scope}.max_sample_bytes must be > 0, got {self.max_sample_bytes}")


@dataclass(kw_only=True)
class DataLoaderConfig(_PageSettings):
    source: str
    """Shards: a local path, brace pattern ('idl-train-{00000..02999}.tar'), 'pipe:<command>' or URL,
    or rendered text ('render:lines', 'render:blocks', 'render:pages'; see data.render); several
    joined with '::'."""
    batch_size: int = 8
    """Micro-batch size on each rank (one forward/backward)."""
    num_samples: int
    """Samples in one interval, summed over all ranks; sets the steps per interval."""
    num_workers: int = 4
    """DataLoader worker processes per rank."""
    source_weights: list[float] | None = None
    """Sampling weight of each '::'-separated source (needs --data.train.resampled true);
    unset: every shard equally likely."""
    resampled: bool = False
    """Sample shards with replacement (needed when there are fewer shards than ranks x workers)."""
    image_pipeline: Literal["resize_pad", "doc_aug"] = "resize_pad"
    """Image transform. 'resize_pad': keep the aspect ratio, pad to the encoder size, no
    randomness (eval). 'doc_aug': the same plus scale/placement jitter, small rotation and shear,
    erosion/dilation, blur, contrast and JPEG noise (training)."""
    page_sampling: Literal["random", "first", "all"] = "random"
    """Which pages of a multi-page document become samples: one drawn at random (seeded per
    sample and interval), the first, or every page with text."""
    shuffle_buffer: int = 256
    """Samples held in the in-worker shuffle buffer (0 turns sample shuffling off)."""
    max_skip_fraction: float = 0.1
    """Stop the run once this fraction of read samples was skipped as unreadable."""
    min_patches: int | None = None
    """Pixels-only presets, training: draw each page's patch budget from [min_patches, the preset's
    max_patches] (NaViT's resolution sampling: cheaper steps and robustness to scale; packing keeps
    the rows full). Unset: every page gets max_patches (Pix2Struct)."""

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ValueError(f"--data.train.batch_size must be > 0, got {self.batch_size}")
        if self.num_samples <= 0:
            raise ValueError(f"--data.train.num_samples must be > 0, got {self.num_samples}")
        if self.num_workers < 0:
            raise ValueError(f"--data.train.num_workers must be >= 0, got {self.num_workers}")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ValueError(
                f"--data.train.max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}"
            )
        self.check("train")
        if self.min_patches is not None and self.min_patches < 1:
            raise ValueError(f"--data.train.min_patches must be >= 1 (or unset), got {self.min_patches}")
        if not self.source.strip():
            raise ValueError("--data.train.source is empty: give a shard path or pattern")
        if any(part.strip().startswith("render:") for part in self.source.split("::")) and not self.resampled:
            raise ValueError("--data.train.source render:... is an endless stream of rendered text: add "
                             "--data.train.resampled true (sources are then drawn by --data.train.source_weights)")
        if self.source_weights is not None:
            num_sources = len(self.source.split("::"))
            if not self.resampled:
                raise ValueError("--data.train.source_weights needs --data.train.resampled true "
                                 "(weights are sampling probabilities)")
            if len(self.source_weights) != num_sources or any(w < 0 for w in self.source_weights) \
                    or sum(self.source_weights) <= 0:
                raise ValueError(
                    f"--data.train.source_weights must be {num_sources} non-negative numbers (one per "
                    f"'::'-separated source) with a positive sum, got {self.source_weights}"
                )


@dataclass(kw_only=True)
class DataEvalConfig(_PageSettings):
    source: str
    """Eval shards: a local path, brace pattern, 'pipe:<command>' or URL; '::' joins several.
    Read once, in order, each shard by one rank."""
    num_samples: int | None = None
    """Evaluate at most this many samples (each rank takes its share); unset: all."""
    batch_size: int = 8
    """Samples per forward on each rank."""
    num_workers: int = 1
    """DataLoader worker processes per rank."""
    page_sampling: Literal["first", "all"] = "first"
    """Which pages of a multi-page document are evaluated: the first with text, or all."""
    image_pipeline: Literal["resize_pad"] = "resize_pad"
    """Aspect-preserving resize and white pad, no randomness."""
    max_skip_fraction: float = 0.1
    """Fail the evaluation if more than this fraction of read samples was unusable."""

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ValueError("--data.eval.source is empty: give a shard path or pattern")
        if self.num_samples is not None and self.num_samples <= 0:
            raise ValueError(f"--data.eval.num_samples must be > 0 (or unset), got {self.num_samples}")
        if self.batch_size <= 0:
            raise ValueError(f"--data.eval.batch_size must be > 0, got {self.batch_size}")
        self.check("eval")
        if self.num_workers < 0:
            raise ValueError(f"--data.eval.num_workers must be >= 0, got {self.num_workers}")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ValueError(f"--data.eval.max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")


@dataclass(kw_only=True)
class DataConfig:
    train: DataLoaderConfig
    """Training data."""
    eval: DataEvalConfig | None = None
    """Evaluation during training, at the end of every interval: token loss, image_gap and the
    task's metrics (generation), logged as eval/*."""


@dataclass(kw_only=True)
class EvalAppData:
    eval: DataEvalConfig
    """The data to evaluate on."""
