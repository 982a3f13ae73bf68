"""Root configs, one per subcommand. Imports only the stdlib and other config modules."""
from dataclasses import dataclass, field

from pixparse.data.config import DataConfig, EvalAppData
from pixparse.engine.config import TrainConfig
from pixparse.tasks.config import ObjectiveConfig, TaskConfig


@dataclass(kw_only=True)
class PretrainConfig:
    """Train a model on 1..N ranks: a task (objective and model) on data, under a DeepSpeed JSON."""

    data: DataConfig
    """Data loading."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """Model, objective and optimizer."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Run folder, logging, checkpoints."""
    deepspeed_config: str | None = None
    """DeepSpeed JSON (ZeRO stage, precision, clipping); see ds_configs/. Unset: ZeRO-2 with the
    precision of --task.dtype (what ds_configs/zero2_<dtype>.json holds)."""
    local_rank: int = -1
    """Set by the deepspeed launcher; the rank itself is read from LOCAL_RANK/RANK."""


@dataclass(kw_only=True)
class BenchConfig(PretrainConfig):
    """Throughput of training steps: the pretrain config plus the timing window."""

    synthetic_data: bool = False
    """Feed random pixels and full-length text made once (the model alone, no loader; the CPU
    batch is copied to the device every step, as the loader's would be); --data.train.source
    is then not read (pass any value)."""
    warmup_steps: int = 5
    """Optimizer steps run before timing starts (compilation, allocator warm-up)."""
    steps: int = 20
    """Optimizer steps timed."""

    def __post_init__(self) -> None:
        if self.steps < 20:
            raise ValueError(f"--steps must be >= 20 for a stable rate, got {self.steps}")
        if self.warmup_steps < 1:
            raise ValueError(f"--warmup_steps must be >= 1, got {self.warmup_steps}")


@dataclass(kw_only=True)
class EvalCheckpoint:
    checkpoint_path: str
    """What to evaluate: a checkpoint tag (any ZeRO stage, written on any number of ranks), a
    checkpoint folder (its `latest` tag is used) or an export folder; local, s3://BUCKET/KEY, or
    a key in --s3-bucket."""
    cache_dir: str = "~/.cache/pixparse/s3"
    """Where S3 checkpoints are copied (reused when the files are already there)."""


@dataclass(kw_only=True)
class EvalConfig:
    """Evaluate a checkpoint: token loss, image_gap and the task's metrics on eval shards."""

    data: EvalAppData
    """Eval data (--data.eval.*)."""
    task: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """The objective (--task.name must be the one the checkpoint was trained for; unset: the
    checkpoint's) and the generation settings (--task.max_new_tokens, --task.num_beams)."""
    eval: EvalCheckpoint
    """The checkpoint."""
    output_dir: str = "eval"
    """Folder for <checkpoint>-<dataset>-metrics.json and <checkpoint>-<dataset>-predictions.jsonl."""
    s3_bucket: str | None = None
    """S3 bucket holding --eval.checkpoint_path (then a key in it); via boto3 (AWS_ENDPOINT_URL for
    S3-compatible stores)."""
    model_name: str | None = None
    """The preset the checkpoint was trained with, as a check (the checkpoint brings its preset):
    a different one is an error."""
    local_rank: int = -1
    """Set by the deepspeed launcher; the rank itself is read from LOCAL_RANK/RANK."""

    def __post_init__(self) -> None:
        if self.s3_bucket is not None and self.eval.checkpoint_path.startswith("s3://"):
            raise ValueError("--s3-bucket with an s3:// --eval.checkpoint-path: give the bucket once")
