"""Engine (run folder, logging, checkpoints) configuration. Imports only the stdlib."""
import importlib.util
from dataclasses import dataclass


@dataclass(kw_only=True)
class TrainConfig:
    output_dir: str = "runs"
    """Parent folder of run folders (logs, TensorBoard, config.yaml, ds_config.json)."""
    checkpoint_dir: str | None = None
    """Parent folder for checkpoints. Unset: <output_dir>/<experiment>/checkpoints."""
    experiment: str | None = None
    """Run name. Unset: a timestamp plus model name, chosen on rank 0."""
    tensorboard: bool = False
    """Write TensorBoard event files to <output_dir>/<experiment>/tensorboard."""
    wandb: bool = False
    """Also log the metrics (and the eval gallery) to Weights & Biases, in <run>/wandb. Needs
    `pip install wandb`; WANDB_MODE=offline works with no network (upload later: `wandb sync`)."""
    wandb_project: str = "pixparse"
    """W&B project of --train.wandb runs."""
    log_eval_data: bool = False
    """After each evaluation, log a gallery of the first --train.log_eval_samples eval samples (page
    image as the model sees it, its output, the reference) to TensorBoard (and W&B). Needs
    --data.eval.source and --train.tensorboard or --train.wandb."""
    log_eval_samples: int = 4
    """Samples in the --train.log_eval_data gallery."""
    log_filename: str = "out.log"
    """Log file name inside the run folder (rank 0)."""
    log_every_n_steps: int = 10
    """Optimizer steps between log lines; step 1 and the last step of an interval always log."""
    progress_bar: bool = True
    """A progress bar per interval on rank 0 (only when stderr is a terminal)."""
    seed: int = 42
    """Seed for model init, data order and augmentation."""
    checkpoint_every_n_steps: int = 0
    """Also checkpoint every N optimizer steps inside an interval (0: interval ends only)."""
    keep_last_k: int = 3
    """Checkpoints to keep; older ones are deleted after a newer one is complete."""
    max_nonfinite_steps: int = 10
    """A micro-batch whose loss is NaN or inf (on any rank) is skipped on every rank: no backward,
    no update; counted (train/nonfinite). This many in a row stop the run without saving, so the
    last checkpoint stays the latest good one. 0: no check (it costs one host sync per micro-batch)."""
    resume: str | None = None
    """'latest', a checkpoint folder, or 'auto' (latest if this experiment has one, else start
    fresh: what a requeued job wants)."""
    nvtx_ranges: bool = False
    """Keep DeepSpeed's NVTX ranges around its ZeRO functions (for an Nsight Systems profile). Off,
    they are skipped: each is a range push and pop plus two compile checks, ~1700 a cruller_tiny
    ZeRO-3 step."""
    patch_deepspeed: bool = True
    """Install the DeepSpeed patches listed in pixparse/engine/zero_fast.py (the fused clipping
    norm; local collectives on a one-process world), each checked for the DeepSpeed version and
    every attribute it replaces first (otherwise DeepSpeed's own is kept, logged). false:
    DeepSpeed's own methods throughout."""
    zero_init: bool = True
    """Under ZeRO-3, build the model already partitioned over the ranks (deepspeed.zero.Init, init
    redone per module gathered) instead of a full copy per rank first. Where the build cannot
    (pretrained or --task.init_from weights, a non-ViT timm trunk, --task.opt.layer_decay) it is
    built in full, logged."""

    def __post_init__(self) -> None:
        if self.log_every_n_steps <= 0:
            raise ValueError(f"--train.log_every_n_steps must be > 0, got {self.log_every_n_steps}")
        if self.checkpoint_every_n_steps < 0:
            raise ValueError(
                f"--train.checkpoint_every_n_steps must be >= 0, got {self.checkpoint_every_n_steps}"
            )
        if self.log_eval_data and not (self.tensorboard or self.wandb):
            raise ValueError("--train.log_eval_data true shows its gallery in TensorBoard or W&B: add "
                             "--train.tensorboard true or --train.wandb true")
        if self.log_eval_samples <= 0:
            raise ValueError(f"--train.log_eval_samples must be > 0, got {self.log_eval_samples}")
        if self.wandb and importlib.util.find_spec("wandb") is None:
            raise ValueError("--train.wandb true needs the wandb package: pip install wandb")
        if self.max_nonfinite_steps < 0:
            raise ValueError(f"--train.max_nonfinite_steps must be >= 0, got {self.max_nonfinite_steps}")
        if self.keep_last_k <= 0:
            raise ValueError(f"--train.keep_last_k must be > 0, got {self.keep_last_k}")
        if self.experiment is not None and ("/" in self.experiment or self.experiment.strip() in ("", ".", "..")):
            raise ValueError(
                f"--train.experiment must be a plain folder name, got {self.experiment!r}"
            )
        # DeepSpeed finds a checkpoint's files by glob patterns built from its folder's path: with
        # these characters in it, a resume would read another folder's files (or none).
        for flag, value in (("experiment", self.experiment), ("output_dir", self.output_dir),
                            ("checkpoint_dir", self.checkpoint_dir)):
            if value is not None and any(c in value for c in "*?[]"):
                raise ValueError(f"--train.{flag} {value!r} contains a glob character (*?[]): DeepSpeed reads "
                                 f"checkpoints by glob pattern, so the run could not be resumed; pick another name")
