"""Root configs, one per subcommand. Imports only the stdlib and other config modules."""
from dataclasses import dataclass, field

from pixparse.data.config import DataConfig
from pixparse.engine.config import TrainConfig
from pixparse.tasks.config import TaskPretrainConfig


@dataclass(kw_only=True)
class PretrainConfig:
    data: DataConfig
    """Data loading."""
    task: TaskPretrainConfig = field(default_factory=TaskPretrainConfig)
    """Model, objective and optimizer."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Run folder, logging, checkpoints."""
    deepspeed_config: str
    """DeepSpeed JSON (ZeRO stage, precision, clipping); see ds_configs/."""
    local_rank: int = -1
    """Set by the deepspeed launcher; the rank itself is read from LOCAL_RANK/RANK."""
