"""Task registry: --task.name -> the class that owns that objective."""
from pixparse.tasks.base import TaskBase
from pixparse.tasks.fields import TaskFinetuneCord, TaskFinetuneSroie
from pixparse.tasks.pretrain import TaskReadPretrain, TaskParsePretrain, TaskPrefixLMPretrain, TaskSpanPretrain
from pixparse.tasks.qa import TaskFinetuneDocVQA, TaskFinetuneRvlcdip, TaskFinetuneXent

TASKS: dict[str, type[TaskBase]] = {t.name: t for t in (
    TaskReadPretrain, TaskFinetuneSroie, TaskFinetuneCord, TaskFinetuneDocVQA,
    TaskFinetuneRvlcdip, TaskFinetuneXent, TaskParsePretrain, TaskPrefixLMPretrain, TaskSpanPretrain,
)}


def create_task(cfg, model_cfg=None, train_source: str | None = None) -> TaskBase:
    """Build the task named by --task.name (its model, tokenizer and objective)."""
    return TASKS[cfg.name](cfg, model_cfg, train_source)
