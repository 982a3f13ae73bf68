"""What the engine asks of a task: `EngineTask`, the whole interface between the train and eval
engines and an objective. `pixparse.tasks.base.TaskBase` implements it; any nn.Module that does
trains under the engine (DeepSpeed wraps it, its parameters are the optimizer's)."""
from collections.abc import Callable
from typing import Any, Protocol

import torch


class EngineTask(Protocol):
    cfg: Any  # the task's config; the engine reads cfg.max_new_tokens for generation in eval

    # training: DeepSpeed runs the module's forward, batch -> {"loss", "num_target_tokens", ...}
    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def parameters(self, recurse: bool = True) -> Any: ...

    # the loader's worker-side preprocessing (sample, rng) -> items, and its collate
    def preprocess(self, data_cfg: Any, with_meta: bool = False) -> Callable[..., list[dict[str, Any]]]: ...

    def collate(self, data_cfg: Any) -> Callable[[list[dict[str, Any]]], dict[str, Any]]: ...

    def batch_stats(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """{'flops', 'image_tokens', 'text_tokens'} of a CPU batch, for throughput."""

    def synthetic_batch(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A worst-case batch of random data (`--train.synthetic_data`, benchmarks)."""

    def save_assets(self, out_dir: str) -> None:
        """What a checkpoint needs beside the weights to export on its own (preset, tokenizer)."""

    # evaluation
    def eval_batch(self, batch: dict[str, torch.Tensor], max_new_tokens: int | None,
                   synced: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
        """(loss per sample with its own image, with another's, target tokens per sample, texts)."""

    def postprocess(self, text: str) -> Any: ...

    def sample_scores(self, prediction: Any, reference: Any) -> dict[str, float]: ...

    def score(self, predictions: list[Any], references: list[Any]) -> dict[str, float]: ...

    def page_image(self, batch: dict[str, Any], index: int) -> torch.Tensor: ...
