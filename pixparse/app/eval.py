"""`python -m pixparse.app.eval ...` == `pixparse eval ...`: score a checkpoint on eval shards.

    python -m pixparse.app.eval --task.name finetune_sroie \
        --data.eval.source "shards/sroie-{000000..000007}.tar" --data.eval.batch-size 8 \
        --eval.checkpoint-path runs/x/checkpoints --output-dir eval

One process, or N ranks under torchrun/deepspeed (each reads its own shards; predictions are
gathered on rank 0). The weights are the consolidated fp32 masters of any ZeRO stage and world
size (or an export), run as a plain model. Writes <output_dir>/<checkpoint>-<dataset>-metrics.json
(task metrics, token loss, image_gap) and <output_dir>/<checkpoint>-<dataset>-predictions.jsonl (key, prediction,
reference, per-sample scores), and prints the metrics as one JSON line.
"""
import dataclasses
import json
import logging
import os
import re
import sys

from pixparse.config import EvalConfig

logger = logging.getLogger(__name__)


def checkpoint_name(path: str) -> str:
    """runs/x/checkpoints/step_00000320 -> x-step_00000320; an export folder -> its name."""
    path = os.path.abspath(path)
    name, parent = os.path.basename(path), os.path.dirname(path)
    if re.match(r"^step_\d+$", name):
        run = os.path.basename(parent)
        if run == "checkpoints":
            run = os.path.basename(os.path.dirname(parent))
        return f"{run}-{name}"
    return name


def dataset_name(source: str) -> str:
    """'shards/sroie-{000000..000007}.tar' -> 'sroie' (the first '::'-separated part's name)."""
    from pixparse.engine.evaluate import part_name

    return part_name(source.split("::")[0])


def _check(cfg: EvalConfig) -> str:
    """Everything a user can get wrong, before any process group: returns the resolved checkpoint."""
    from pixparse.data.loader import check_eval_shards, probe_pipe_sources
    from pixparse.models.export import read_info, resolve_checkpoint_path
    from pixparse.tasks.config import canonical_task_name

    path = cfg.eval.checkpoint_path
    if cfg.s3_bucket is not None:
        path = f"s3://{cfg.s3_bucket}/{path.lstrip('/')}"
    if path.startswith("s3://"):
        from pixparse.app.s3 import fetch_checkpoint

        path = fetch_checkpoint(path, os.path.expanduser(cfg.eval.cache_dir))
    path = resolve_checkpoint_path(path)
    try:
        info = read_info(path)
    except ValueError as e:
        raise ValueError(f"--eval.checkpoint_path {e}") from None
    trained_for = canonical_task_name(info.get("task", "read_pretrain"))
    if trained_for != cfg.task.name:
        raise ValueError(f"--task.name {cfg.task.name}: {path} was trained for {trained_for}; "
                         f"pass --task.name {trained_for}")
    if cfg.model_name is not None:
        preset = info.get("model_name")
        if preset is None:
            logger.warning("--model-name %s: %s does not record its preset; not checked", cfg.model_name, path)
        elif preset != cfg.model_name:
            raise ValueError(f"--model-name {cfg.model_name}: {path} is a {preset} model; drop --model-name "
                             f"(the checkpoint brings its preset) or pass {preset}")
    check_eval_shards(cfg.data.eval)
    probe_pipe_sources(cfg.data.eval.source, "--data.eval.source")
    return path


def run_eval(cfg: EvalConfig) -> dict:
    import torch

    from pixparse.data.loader import create_eval_loader
    from pixparse.engine import dist as pdist
    from pixparse.engine import logging as plogging
    from pixparse.engine.evaluate import evaluate_source
    from pixparse.tasks.config import TaskConfig
    from pixparse.tasks.registry import create_task

    checkpoint = _check(cfg)
    rank, local_rank, world_size = pdist.world_info()
    plogging.setup(rank)
    pdist.share_cpu_threads()
    pdist.init_distributed()
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    from pixparse.engine.ds_config import resolve_dtype

    dtype, why = resolve_dtype(cfg.task.dtype or "float32")
    logger.info("precision %s (%s)", dtype, why if cfg.task.dtype else "default")
    task = create_task(TaskConfig(**dataclasses.asdict(cfg.task), init_from=checkpoint))
    task = task.to(device, getattr(torch, dtype)).eval()
    data = cfg.data.eval
    loader = create_eval_loader(data, task.preprocess(data, with_meta=True), task.collate(data), rank, world_size)
    records, metrics = evaluate_source(task, loader, device, data, world_size,
                                       progress=rank == 0 and sys.stderr.isatty())
    metrics.update(checkpoint=checkpoint, task=cfg.task.name, source=data.source, world_size=world_size,
                   dtype=dtype)
    if rank == 0:
        os.makedirs(cfg.output_dir, exist_ok=True)
        stem = os.path.join(cfg.output_dir, f"{checkpoint_name(checkpoint)}-{dataset_name(data.source)}")
        metrics["predictions"] = f"{stem}-predictions.jsonl"
        with open(metrics["predictions"], "w") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        with open(f"{stem}-metrics.json", "w") as f:
            json.dump(metrics, f, indent=2)
        logger.info("%d samples: %s -> %s-metrics.json", len(records),
                    {k: v for k, v in metrics.items() if isinstance(v, float)}, stem)
        print(json.dumps(metrics))
    return metrics


def main(argv: list[str] | None = None) -> None:
    from pixparse.cli import main as cli_main

    cli_main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
