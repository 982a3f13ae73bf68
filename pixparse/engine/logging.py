"""Process-wide logging setup and rank-0 metric sinks."""
import contextlib
import json
import logging
import math
import os
import sys
from typing import Any


def setup(rank: int, log_file: str | None = None) -> None:
    """INFO on rank 0, WARNING elsewhere; the rank in every line. Call once per process."""
    level = logging.INFO if rank == 0 else logging.WARNING
    fmt = logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s",
                            datefmt="%H:%M:%S")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    stream = logging.StreamHandler(sys.stdout)
    stream.setFormatter(fmt)
    root.addHandler(stream)
    root.setLevel(level)
    if log_file is not None:
        add_file(log_file)


def add_file(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(root.handlers[0].formatter if root.handlers else None)
    root.addHandler(handler)


class MetricSink:
    """No-op sink: what non-zero ranks (and runs without TensorBoard) get."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def gallery(self, step: int, items: list[dict[str, Any]]) -> None:
        """A few eval samples: {'key', 'image' (C, H, W) uint8 tensor, 'text' (the model's output),
        'reference'}."""

    def close(self) -> None:
        pass


def _caption(item: dict[str, Any]) -> str:
    return f"{item['key']}\n\nprediction:\n{item['text']}\n\nreference:\n{item['reference']}"


def _null_if_not_finite(value: Any) -> Any:
    """Strict JSON: a float that is not finite (the loss of a window whose batches were all skipped)
    becomes null, at any depth; json.dumps would write a bare NaN that strict readers refuse."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _null_if_not_finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_null_if_not_finite(v) for v in value]
    return value


class JsonlSink(MetricSink):
    """One JSON object per log step in <run>/metrics.jsonl (easy to diff and plot across runs)."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a")

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        self.file.write(json.dumps({"step": step, **_null_if_not_finite(values)}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class MultiSink(MetricSink):
    def __init__(self, sinks: list[MetricSink]) -> None:
        self.sinks = sinks

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        for s in self.sinks:
            s.scalars(step, values)

    def gallery(self, step: int, items: list[dict[str, Any]]) -> None:
        for s in self.sinks:
            s.gallery(step, items)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


class TensorBoardSink(MetricSink):
    def __init__(self, log_dir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=log_dir)

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def gallery(self, step: int, items: list[dict[str, Any]]) -> None:
        for i, item in enumerate(items):
            self.writer.add_image(f"eval_samples/{i}", item["image"], step, dataformats="CHW")
            # markdown: keep line breaks and field tokens as written
            self.writer.add_text(f"eval_samples/{i}", "    " + _caption(item).replace("\n", "\n    "), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink(MetricSink):
    """The same scalars (and the eval gallery as a table) in Weights & Biases. The run lives in
    <run_dir>/wandb; WANDB_MODE=offline writes it there with no network (`wandb sync` uploads it
    later). A resumed run continues the same W&B run (its id is the experiment's)."""

    def __init__(self, run_dir: str, project: str, experiment: str, config: dict[str, Any]) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=experiment, id=experiment, resume="allow", dir=run_dir,
                              config=config)

    def scalars(self, step: int, values: dict[str, Any]) -> None:
        self.run.log(dict(values), step=step)

    def gallery(self, step: int, items: list[dict[str, Any]]) -> None:
        table = self.wandb.Table(columns=["key", "page", "prediction", "reference"])
        for item in items:
            table.add_data(item["key"], self.wandb.Image(item["image"].permute(1, 2, 0).squeeze(-1).numpy()),
                           item["text"], str(item["reference"]))
        self.run.log({"eval/samples": table}, step=step)

    def close(self) -> None:
        self.run.finish()


def logs_above_bar(shown: bool) -> Any:
    """While a progress bar is shown, console log lines are written above it (through tqdm), not
    over it."""
    if not shown:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()
