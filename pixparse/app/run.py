"""Entry points that glue the config to the engine: validation first, then the process group."""
import dataclasses
import json
import logging
import os
import time
from typing import Any

import yaml

from pixparse.config import BenchConfig, PretrainConfig
from pixparse.models.config import ModelConfig

logger = logging.getLogger(__name__)


def checkpoint_dir_for(cfg: PretrainConfig, experiment: str) -> str:
    if cfg.train.checkpoint_dir:
        return os.path.join(cfg.train.checkpoint_dir, experiment)
    return os.path.join(cfg.train.output_dir, experiment, "checkpoints")


def _refuse_to_overwrite(cfg: PretrainConfig) -> None:
    ckpt_dir = checkpoint_dir_for(cfg, cfg.train.experiment)
    if os.path.isdir(ckpt_dir) and any(t.startswith("step_") for t in os.listdir(ckpt_dir)):
        raise ValueError(
            f"--train.experiment {cfg.train.experiment!r} already has checkpoints in {ckpt_dir}; "
            f"pass --train.resume latest to continue it, or choose another --train.experiment"
        )


def _check_precision_supported(ds_config: dict, path: str) -> None:
    from deepspeed.accelerator import get_accelerator

    from pixparse.engine.ds_config import compute_dtype_name

    acc = get_accelerator()
    dtype = compute_dtype_name(ds_config)
    if dtype == "float16" and not acc.is_fp16_supported():
        raise ValueError(f"{path} enables fp16, which the {acc.device_name()} accelerator does not "
                         f"support; use a bf16 or fp32 config (ds_configs/zero2_bf16.json)")
    if dtype == "bfloat16" and not acc.is_bf16_supported():
        raise ValueError(f"{path} enables bf16, which this {acc.device_name()} device does not "
                         f"support; use ds_configs/zero2_fp16.json or zero2_fp32.json")


def _run_info() -> dict:
    """Git sha, library versions and the command line: what config.yaml alone does not say."""
    import platform
    import subprocess
    import sys

    import deepspeed
    import timm
    import torch
    import transformers

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = None, None
    return {
        "git_sha": sha, "git_dirty": dirty, "argv": sys.argv, "host": platform.node(),
        "python": platform.python_version(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
        "timm": timm.__version__, "transformers": transformers.__version__,
        "world_size": int(os.environ.get("WORLD_SIZE", 1)),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
    }


def _make_run_folder(cfg: PretrainConfig, rank: int, ds_config: dict, model_config: dict) -> Any:
    """Rank 0 names the run (broadcast to all) and writes config.yaml, ds_config.json and
    model_config.json: with the git sha they reproduce the run."""
    from pixparse.engine import dist as pdist
    from pixparse.engine import logging as plogging
    from pixparse.engine.train import RunPaths

    experiment = pdist.broadcast_object(
        cfg.train.experiment
        or f"{time.strftime('%Y%m%d-%H%M%S')}-{os.path.basename(cfg.task.model_name).removesuffix('.json')}"
    )
    run_dir = os.path.join(cfg.train.output_dir, experiment)
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
        plogging.add_file(os.path.join(run_dir, cfg.train.log_filename))
        with open(os.path.join(run_dir, "config.yaml"), "w") as f:
            yaml.safe_dump(dataclasses.asdict(cfg), f, sort_keys=False)
        with open(os.path.join(run_dir, "ds_config.json"), "w") as f:
            json.dump(ds_config, f, indent=2)
        with open(os.path.join(run_dir, "model_config.json"), "w") as f:
            json.dump(model_config, f, indent=2)
        with open(os.path.join(run_dir, "run_info.json"), "w") as f:
            json.dump(_run_info(), f, indent=2)
    return RunPaths(run_dir=run_dir, checkpoint_dir=checkpoint_dir_for(cfg, experiment),
                    tensorboard_dir=os.path.join(run_dir, "tensorboard"))


@dataclasses.dataclass
class RunSetup:
    """What a run is built from: rank, world size, the final DeepSpeed config, the step plan, the
    preset, the run folder's paths, the task (model built) and the (checkpoint dir, tag) resumed."""

    rank: int
    world_size: int
    ds_config: dict
    plan: Any
    model_cfg: Any
    paths: Any
    task: Any
    resume: tuple[str, str] | None


def check_patch_budget(min_patches: int | None, model_cfg: ModelConfig) -> None:
    """--data.train.min_patches applies to pix2struct presets, up to their max_patches (>= 1 is
    DataLoaderConfig's own check)."""
    if min_patches is None:
        return
    if model_cfg.type != "pix2struct":
        raise ValueError(f"--data.train.min_patches applies to pix2struct presets (variable resolution), not to "
                         f"a {model_cfg.type} preset: drop it")
    if min_patches > model_cfg.image_encoder.max_patches:
        raise ValueError(f"--data.train.min_patches={min_patches} must be <= the preset's max_patches="
                         f"{model_cfg.image_encoder.max_patches}")


def setup_run(cfg: PretrainConfig, read_shards: bool = True) -> RunSetup:
    """Validate everything a user can get wrong, then start the process group, name the run
    folder and build the task: what pretrain, bench and the benchmarks build a Trainer from.
    `read_shards` False: the training shards are not checked (synthetic batches)."""
    from pixparse.engine import dist as pdist

    pdist.check_deepspeed_version()
    rank, _, world_size = pdist.world_info()
    resume = _check_resume(cfg)
    ds_config, single_rank_changes = _final_ds_config(cfg, world_size, resume)
    plan, model_cfg = _check_config(cfg, world_size, read_shards)
    paths = _start(cfg, rank, world_size, ds_config, single_rank_changes, plan, model_cfg)
    task = _build_task(cfg, model_cfg, ds_config, world_size)
    return RunSetup(rank, world_size, ds_config, plan, model_cfg, paths, task, resume)


def _check_resume(cfg: PretrainConfig) -> tuple[str, str] | None:
    """--train.resume resolved to the (checkpoint dir, tag) it resumes from, or None: 'auto' is
    'latest' when the run has a complete checkpoint. A missing, incomplete or unsafe tag fails here,
    before any process group."""
    from pixparse.engine.checkpoint import list_complete_tags, resolve_resume

    spec = cfg.train.resume
    if spec == "auto" and not cfg.train.experiment:
        raise ValueError("--train.resume auto needs a fixed --train.experiment to find its checkpoints")
    if spec == "latest" and not cfg.train.experiment:
        raise ValueError("--train.resume latest needs --train.experiment: the name of the run to continue")
    if cfg.train.experiment and not spec:
        _refuse_to_overwrite(cfg)
    if not spec:
        return None
    ckpt_dir = checkpoint_dir_for(cfg, cfg.train.experiment or "")
    if spec == "auto":
        if not list_complete_tags(ckpt_dir):
            return None
        spec = "latest"
    return resolve_resume(spec, ckpt_dir)


def _final_ds_config(cfg: PretrainConfig, world_size: int, resume: tuple[str, str] | None) -> tuple[dict, list[str]]:
    """The DeepSpeed dict handed to deepspeed.initialize, made here and nowhere else: the JSON with
    every "auto" filled from the flags (resolve_ds_config), what one rank does not need turned off
    (single_rank_zero), and DeepSpeed's universal loading when the resumed checkpoint was saved
    on another number of ranks (ZeRO tags; a stage-0 tag loads as it is). Returns (the dict, the keys
    one rank changed)."""
    from pixparse.engine.checkpoint import check_resume_stage, saved_world_size
    from pixparse.engine.ds_config import resolve_ds_config, single_rank_zero, zero_stage

    ds_config = resolve_ds_config(
        cfg.deepspeed_config, cfg.data.train.batch_size, cfg.task.opt.grad_accum_steps,
        world_size, cfg.task.opt.clip_grad_value, cfg.task.dtype,
    )
    _check_precision_supported(ds_config, cfg.deepspeed_config or "--task.dtype")
    changed = single_rank_zero(ds_config, world_size)
    if resume is not None:
        stage = zero_stage(ds_config)
        check_resume_stage(*resume, stage)
        if stage > 0 and saved_world_size(*resume) != world_size:
            ds_config.setdefault("checkpoint", {})["load_universal"] = True
    return ds_config, changed


def _check_config(cfg: PretrainConfig, world_size: int, read_shards: bool) -> tuple[Any, ModelConfig]:
    """The checks that need no process group, beyond the resume and the DeepSpeed config: the step
    plan, the shards, the preset or init checkpoint. Returns (plan, model config)."""
    from pixparse.data.loader import check_eval_shards, check_shards_cover, probe_pipe_sources
    from pixparse.engine.train import make_plan
    from pixparse.models import get_model_config

    plan = make_plan(cfg.data.train, cfg.task.opt, cfg.task.num_intervals,
                     cfg.task.warmup_intervals, world_size)
    if read_shards:
        check_shards_cover(cfg.data.train, world_size)
        probe_pipe_sources(cfg.data.train.source, "--data.train.source")
    if cfg.data.eval is not None:
        check_eval_shards(cfg.data.eval, world_size)
        probe_pipe_sources(cfg.data.eval.source, "--data.eval.source")
    elif cfg.train.log_eval_data:
        raise ValueError("--train.log_eval_data true shows eval samples: give them with --data.eval.source")
    if cfg.task.init_from:
        from pixparse.models.export import read_source

        model_cfg = read_source(cfg.task.init_from)[0]
    else:
        model_cfg = get_model_config(cfg.task.model_name)
        if cfg.task.tokenizer:  # a missing or damaged tokenizer file fails here, not on every rank later
            from pixparse.data.tokenizer import create_tokenizer

            create_tokenizer(cfg.task.tokenizer)
    from pixparse.models.image_encoder import validate_encoder_config

    validate_encoder_config(model_cfg.image_encoder)
    from pixparse.tasks.registry import TASKS

    TASKS[cfg.task.name].check_model(model_cfg, cfg.task.init_from or cfg.task.model_name)
    check_patch_budget(cfg.data.train.min_patches, model_cfg)
    return plan, model_cfg


def _start(cfg: PretrainConfig, rank: int, world_size: int, ds_config: dict, changed: list[str], plan: Any,
           model_cfg: ModelConfig) -> Any:
    """Logging, threads, the process group and the run folder; logs the run's shape. Returns the
    run folder's paths."""
    from pixparse.engine import dist as pdist
    from pixparse.engine import logging as plogging
    from pixparse.engine.ds_config import compute_dtype_name, resolve_dtype, zero_stage

    plogging.setup(rank)
    threads = pdist.share_cpu_threads()
    if threads is not None:
        logger.info("OMP_NUM_THREADS unset: %d torch thread(s) per rank", threads)
    pdist.init_distributed(cfg.train.patch_deepspeed)
    paths = _make_run_folder(cfg, rank, ds_config, model_cfg.to_dict())
    logger.info("run %s: %d rank(s), %d steps/interval x %d intervals, global batch %d",
                paths.run_dir, world_size, plan.steps_per_interval, cfg.task.num_intervals,
                plan.global_batch_size)
    if changed and zero_stage(ds_config) == 3:
        logger.info("one rank: every parameter persistent (one rank's partition is the whole parameter); "
                    "changed: %s", ", ".join(changed))
    elif changed:
        logger.info("one rank: %s off (no gradients to exchange)", " and ".join(changed))

    logger.info("precision %s (%s), ZeRO stage %d", compute_dtype_name(ds_config),
                resolve_dtype(cfg.task.dtype)[1] if cfg.task.dtype else cfg.deepspeed_config or "built-in config",
                zero_stage(ds_config))
    return paths


def _build_task(cfg: PretrainConfig, model_cfg: ModelConfig, ds_config: dict, world_size: int) -> Any:
    """The task and its model (partitioned as built under ZeRO-3 with zero.Init), seeded."""
    from pixparse.engine.ds_config import compute_dtype_name
    from pixparse.engine.train import seed_everything
    from pixparse.tasks.registry import create_task

    seed_everything(cfg.train.seed)
    with _model_build(cfg, model_cfg, ds_config, world_size):
        task = create_task(cfg.task, model_cfg, cfg.data.train.source)
    task.train_dtype = compute_dtype_name(ds_config)
    num_params = sum(getattr(p, "ds_numel", p.numel()) for p in task.parameters())
    logger.info("task %s, model %s: %.2fM parameters, tokenizer vocab %d", cfg.task.name,
                task.preset_name, num_params / 1e6, len(task.tokenizer))
    return task


def _model_build(cfg: PretrainConfig, model_cfg: Any, ds_config: dict[str, Any], world_size: int):
    """Under ZeRO-3 (and --train.zero_init), the context that builds the model partitioned."""
    import contextlib

    from pixparse.engine.ds_config import zero_stage
    from pixparse.models import zero_init

    if zero_stage(ds_config) != 3 or not cfg.train.zero_init:
        return contextlib.nullcontext()
    reason = zero_init.unsupported_reason(model_cfg, cfg.task.pretrained, cfg.task.init_from,
                                          cfg.task.opt.layer_decay)
    if reason:
        logger.info("zero.Init off: %s; each rank builds the full model before ZeRO-3 partitions it", reason)
        return contextlib.nullcontext()
    logger.info("zero.Init: the model is built partitioned over %d rank(s)", world_size)
    return zero_init.partitioned_build(ds_config)


def run_pretrain(cfg: PretrainConfig) -> bool:
    """Validate, set up distributed, build the task and train. False if stopped by a signal."""
    from pixparse.engine import checkpoint
    from pixparse.engine.train import Trainer

    setup = setup_run(cfg)
    paths, ds_config = setup.paths, setup.ds_config
    if setup.rank == 0:
        checkpoint.clean_partial(paths.checkpoint_dir)  # saves a kill interrupted
    if cfg.train.resume == "auto":
        logger.info("--train.resume auto: %s", "resuming from latest" if setup.resume else "no checkpoint, starting fresh")
    source = checkpoint.prepare_resume(*setup.resume, setup.world_size) if setup.resume else None
    trainer = Trainer(
        setup.task, cfg.data.train, cfg.train, cfg.task.opt, setup.plan, cfg.task.num_intervals, ds_config,
        paths, dataclasses.asdict(cfg), eval_cfg=cfg.data.eval,
    )
    if source is not None:
        trainer.resume(source)
    finished = trainer.fit()
    logger.info("done: logs %s, checkpoints %s%s", os.path.join(paths.run_dir, cfg.train.log_filename),
                paths.checkpoint_dir, f", tensorboard {paths.tensorboard_dir}" if cfg.train.tensorboard else "")
    return finished


def run_bench(cfg: BenchConfig) -> dict:
    """Time training steps (warmup excluded) and print a table and one JSON line (rank 0)."""
    from pixparse.engine.bench import benchmark, format_report
    from pixparse.engine.train import Trainer

    setup = setup_run(cfg, read_shards=not cfg.synthetic_data)
    trainer = Trainer(
        setup.task, cfg.data.train, cfg.train, cfg.task.opt, setup.plan, cfg.task.num_intervals,
        setup.ds_config, setup.paths, dataclasses.asdict(cfg), build_loader=not cfg.synthetic_data,
    )
    report = benchmark(trainer, cfg.synthetic_data, cfg.warmup_steps, cfg.steps)
    report["model"] = setup.task.preset_name
    if setup.rank == 0:
        print(format_report(report))
        print(json.dumps(report))
        with open(os.path.join(setup.paths.run_dir, "bench.json"), "w") as f:
            json.dump({"report": report, "config": dataclasses.asdict(cfg), "run_info": _run_info()}, f, indent=2)
    return report
