"""The train engine: deepspeed.initialize around a task, interval loop, logging, checkpoints.

It knows nothing of the objective: a task is an nn.Module with the members of
`pixparse.engine.task.EngineTask` (forward(batch) -> {"loss": ...}, preprocess()/collate() for the
loader, eval and throughput hooks).
"""
import hashlib
import json
import logging
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pixparse.data.config import DataEvalConfig, DataLoaderConfig
from pixparse.data.loader import LAST_SKIPPED_KEY, SKIPPED_KEY, create_eval_loader, create_loader
from pixparse.engine import checkpoint, zero_fast
from pixparse.engine.config import TrainConfig
from pixparse.engine.dist import LauncherWatch, to_device
from pixparse.engine.ds_config import compute_dtype_name, zero_stage
from pixparse.engine.evaluate import evaluate_source
from pixparse.engine.logging import JsonlSink, MetricSink, MultiSink, TensorBoardSink, WandbSink, logs_above_bar
from pixparse.engine.throughput import mfu, peak_tflops
from pixparse.engine.optim import create_optimizer
from pixparse.engine.schedule import lr_multiplier
from pixparse.engine.task import EngineTask
from pixparse.engine.zero_fast import collectives_are_local
from pixparse.tasks.config import OptimConfig

logger = logging.getLogger(__name__)


@dataclass
class RunPaths:
    run_dir: str
    checkpoint_dir: str
    tensorboard_dir: str


@dataclass
class Plan:
    """How many steps the run takes, derived from the configs."""

    global_batch_size: int
    steps_per_interval: int
    total_steps: int
    warmup_steps: int


def make_plan(
    data: DataLoaderConfig, opt: OptimConfig, num_intervals: int, num_warmup_intervals: float,
    world_size: int,
) -> Plan:
    global_batch = data.batch_size * opt.grad_accum_steps * world_size
    steps = data.num_samples // global_batch
    if steps == 0:
        raise ValueError(
            f"--data.train.num_samples={data.num_samples} is smaller than one global batch "
            f"({data.batch_size} per rank x {opt.grad_accum_steps} accumulation x {world_size} "
            f"rank(s) = {global_batch}); raise num_samples or lower the batch size"
        )
    return Plan(global_batch, steps, steps * num_intervals, round(steps * num_warmup_intervals))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def config_hash(config_dict: dict[str, Any]) -> str:
    """Hash of what defines the run; how it was launched (--train.resume, the launcher's
    --local_rank) is left out, so a resumed run matches the run it continues."""
    train = {k: v for k, v in config_dict.get("train", {}).items() if k != "resume"}
    defining = {k: v for k, v in config_dict.items() if k != "local_rank"} | {"train": train}
    return hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Window:
    """Sums since the last log line; reduced over ranks only on log steps (one host sync)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        self.micro_batches = 0
        self.samples = 0
        self.text_tokens = 0.0
        self.image_tokens = 0.0
        self.flops = 0.0
        self.data_s = 0.0
        self.start = time.perf_counter()
        self.skipped: Counter = Counter()
        self.last_skipped = ""


def deepspeed_nvtx_ranges(enabled: bool) -> None:
    """Whether DeepSpeed's instrumented functions push and pop NVTX ranges (--train.nvtx_ranges)."""
    import deepspeed.utils.nvtx

    deepspeed.utils.nvtx.enable_nvtx = enabled


class Trainer:
    def __init__(
        self,
        task: EngineTask,
        data_cfg: DataLoaderConfig,
        train_cfg: TrainConfig,
        opt_cfg: OptimConfig,
        plan: Plan,
        num_intervals: int,
        ds_config: dict[str, Any],
        paths: RunPaths,
        config_dict: dict[str, Any],
        build_loader: bool = True,
        eval_cfg: DataEvalConfig | None = None,
    ) -> None:
        import deepspeed

        deepspeed_nvtx_ranges(train_cfg.nvtx_ranges)
        self.task = task
        self.data_cfg = data_cfg
        self.train_cfg = train_cfg
        self.plan = plan
        self.num_intervals = num_intervals
        self.paths = paths
        self.config_hash = config_hash(config_dict)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.accum = opt_cfg.grad_accum_steps

        optimizer = create_optimizer(task, opt_cfg, ds_config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lr_multiplier(
                opt_cfg.schedule, plan.warmup_steps, plan.total_steps, opt_cfg.min_lr_ratio,
                plan.steps_per_interval if opt_cfg.schedule_unit == "interval" else None, opt_cfg.decay_fraction,
            ),
        )
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=task, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        installed = zero_fast.install(self.engine.optimizer) if train_cfg.patch_deepspeed else []
        if installed and self.rank == 0:
            logger.info("DeepSpeed optimizer: %s", "; ".join(installed))
        if collectives_are_local():
            logger.info("one process: DeepSpeed's collectives done locally, not through the process group")
        self.loader = create_loader(
            data_cfg,
            task.preprocess(data_cfg),
            task.collate(data_cfg),
            num_batches=plan.steps_per_interval * self.accum,
            rank=self.rank,
            world_size=self.world_size,
            seed=train_cfg.seed,
        ) if build_loader else None
        self.eval_cfg = eval_cfg
        self.eval_loader = create_eval_loader(
            eval_cfg, task.preprocess(eval_cfg, with_meta=True), task.collate(eval_cfg), self.rank, self.world_size,
        ) if eval_cfg is not None and build_loader else None
        # ZeRO-3 forwards gather parameters collectively: eval ranks must step in lockstep.
        stage = zero_stage(ds_config)
        self.zero3 = stage == 3
        # DeepSpeed's ZeRO and bf16/fp16 optimizers keep the gradient norm they clip with; stage 0 in
        # fp32 clips with clip_grad_norm_ and drops it, so the trainer takes it (after backward's
        # all-reduce, the same on every rank) for the log.
        self.own_grad_norm = stage == 0 and compute_dtype_name(ds_config) == "float32"
        self.grad_norm: torch.Tensor | None = None
        self.sink: MetricSink = MetricSink()
        if self.rank == 0:
            sinks: list[MetricSink] = [JsonlSink(os.path.join(paths.run_dir, "metrics.jsonl"))]
            if train_cfg.tensorboard:
                sinks.append(TensorBoardSink(paths.tensorboard_dir))
            if train_cfg.wandb:
                sinks.append(WandbSink(paths.run_dir, train_cfg.wandb_project,
                                       os.path.basename(paths.run_dir), config_dict))
            self.sink = MultiSink(sinks)
        device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        self.dtype_name = compute_dtype_name(ds_config)
        self.peak_tflops = peak_tflops(device_name, self.dtype_name)
        self.step = 0
        self.interval = 0
        self.batches_done = 0
        self.samples_read = 0
        self._signal = 0
        self._stop_agreed = False  # every rank knows a rank got a stop signal (micro-step check)
        self.skipped_total: Counter = Counter()
        self.last_skipped = ""
        self.nonfinite_total = 0  # micro-batches skipped for a NaN/inf loss
        self.nonfinite_in_row = 0

    # ----------------------------------------------------------------- checkpoint
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "interval": self.interval,
            "batches_done": self.batches_done,  # micro-batches of `interval` already trained on
            "samples_seen": self.step * self.plan.global_batch_size,
            "steps_per_interval": self.plan.steps_per_interval,
            "global_batch_size": self.plan.global_batch_size,
            "config_hash": self.config_hash,
        }

    def save(self) -> str:
        path = checkpoint.save(
            self.engine, self.paths.checkpoint_dir, self.step, self.state(), self.train_cfg.keep_last_k,
            save_assets=self.task.save_assets,
        )
        logger.info("saved checkpoint %s", path)
        return path

    def resume(self, source: "checkpoint.ResumeSource") -> None:
        """Load model, optimizer, scheduler, data position and RNG from a complete checkpoint.

        Same world size and global batch: exact (the next batches are those an uninterrupted run
        would have seen). Another world size (loaded through DeepSpeed's universal format): the
        interval restarts from its beginning, with the step count and LR schedule of this run.
        """
        state = source.state
        elastic = state["world_size"] != self.world_size
        if not elastic and state["global_batch_size"] != self.plan.global_batch_size:
            raise ValueError(
                f"--train.resume: {source.tag} was trained with global batch {state['global_batch_size']}, "
                f"this run has {self.plan.global_batch_size}; keep --data.train.batch_size and "
                f"--task.opt.grad_accum_steps as they were"
            )
        load_path, _ = checkpoint.load_checkpoint(self.engine, source)
        if load_path is None:
            raise ValueError(f"--train.resume: DeepSpeed could not load {source.load_dir}/{source.tag}")
        if state["config_hash"] != self.config_hash:
            logger.warning("resuming from %s written with a different config", load_path)
        self.interval, self.batches_done = state["interval"], state["batches_done"]
        self.step = state["step"]
        if elastic:
            redo = (state["step"] - self.interval * state["steps_per_interval"]) * state["global_batch_size"]
            self.batches_done = 0
            self.step = self.interval * self.plan.steps_per_interval
            self._set_schedule_step(self.step)
            logger.warning(
                "checkpoint written by %d rank(s), resuming on %d: global batch %d -> %d, steps per "
                "interval %d -> %d; interval %d restarts from its beginning (%d samples seen again)",
                state["world_size"], self.world_size, state["global_batch_size"], self.plan.global_batch_size,
                state["steps_per_interval"], self.plan.steps_per_interval, self.interval, redo,
            )
        if not checkpoint.load_rng(source.rng_dir, self.rank):
            logger.warning("no RNG state for rank %d in %s: random streams restart", self.rank, load_path)
        logger.info("resumed from %s at step %d (interval %d, %d batches in)",
                    load_path, self.step, self.interval, self.batches_done)

    def _set_schedule_step(self, step: int) -> None:
        sched = self.scheduler
        for group, base, fn in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * fn(step)
        sched.last_epoch = step
        sched._last_lr = [g["lr"] for g in sched.optimizer.param_groups]

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal = signum

    def _on_launcher_lost(self) -> None:
        logger.warning("the launcher of this rank is gone (killed?): checkpointing and stopping as on SIGTERM")
        self._signal = signal.SIGTERM

    def _stop_requested(self) -> bool:
        """True on every rank once any rank got SIGTERM/SIGUSR1 (one tiny all-reduce)."""
        flag = torch.tensor([1.0 if self._signal else 0.0], device=self.engine.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def evaluate(self) -> dict[str, Any]:
        """Loss, image_gap and the task's metrics on --data.eval (every rank; logged on rank 0)."""
        self.engine.eval()
        gallery = self.train_cfg.log_eval_samples if self.train_cfg.log_eval_data else 0
        records, metrics = evaluate_source(self.engine.module, self.eval_loader, self.engine.device, self.eval_cfg,
                                           self.world_size, synced=self.zero3, keep_images=gallery,
                                           progress=self.train_cfg.progress_bar and self.rank == 0
                                           and sys.stderr.isatty())
        if gallery:
            self.sink.gallery(self.step, [r for r in records if "image" in r][:gallery])
        logger.info("eval after interval %d (step %d): %s", self.interval - 1, self.step,
                    " | ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
        self.sink.scalars(self.step, {f"eval/{k}": float(v) for k, v in metrics.items()})
        self.engine.train()
        return metrics

    # ----------------------------------------------------------------- loop
    def fit(self) -> bool:
        """Train to the end (True) or until a pre-emption signal, after checkpointing (False)."""
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGUSR1)}
        # Multi-rank jobs only: a single process has no launcher to lose (and `nohup python -m
        # pixparse.app.train` must outlive its shell).
        watch = LauncherWatch(self._on_launcher_lost) if self.world_size > 1 else None
        try:
            while self.interval < self.num_intervals:
                if not self.train_interval():
                    self.save()
                    logger.info("stopped on signal %d at step %d; resume with --train.resume latest",
                                self._signal, self.step)
                    return False
                self.interval += 1
                self.batches_done = 0
                self.save()
                if self.eval_loader is not None:
                    self.evaluate()
            return True
        finally:
            if watch is not None:
                watch.stop()
            for s, h in handlers.items():
                signal.signal(s, h)
            self.sink.close()

    def train_interval(self) -> bool:
        """Train the rest of the current interval; False if stopped early by a signal."""
        self.engine.train()
        self.loader.set_interval(self.interval)
        window = _Window(self.engine.device)
        last_step = (self.interval + 1) * self.plan.steps_per_interval
        every = self.train_cfg.checkpoint_every_n_steps
        if self.batches_done:
            logger.info("skipping %d batches already trained on in interval %d", self.batches_done, self.interval)
        shown = self.train_cfg.progress_bar and self.rank == 0 and sys.stderr.isatty()
        bar = tqdm(
            total=self.plan.steps_per_interval, initial=self.batches_done // self.accum,
            desc=f"interval {self.interval}", unit="step", mininterval=2.0, dynamic_ncols=True, disable=not shown,
        )
        try:
            with logs_above_bar(shown):
                return self._run_interval(window, last_step, every, bar)
        finally:
            bar.close()

    def micro_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Forward, backward and (at accumulation boundaries) the optimizer step on one CPU batch.
        Returns the loss (on the device, not synced), or None when a rank's loss was not finite
        and every rank skipped the batch, and the batch's work from batch_stats."""
        work = self.task.batch_stats(batch)  # from the CPU batch: no device sync
        batch = to_device(batch, self.engine.device)
        loss = self.engine(batch)["loss"]
        if self.train_cfg.max_nonfinite_steps:
            # One tiny all-reduce per micro-batch, agreed on by all ranks: a NaN/inf loss anywhere
            # (ZeRO's gradient reduction in backward is collective: all skip or none) and a stop
            # signal anywhere (so pre-emption checkpoints within a step, not at the next log step).
            flags = torch.stack([(~torch.isfinite(loss.detach())).float().reshape(()),
                                 torch.tensor(1.0 if self._signal else 0.0, device=loss.device)])
            if self.world_size > 1:
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            bad, stop = flags.tolist()
            self._stop_agreed = self._stop_agreed or bool(stop)
            if bad:
                return None, work
        self.engine.backward(loss)
        if self.own_grad_norm and self.engine.is_gradient_accumulation_boundary():
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            self.grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
        self.engine.step()
        return loss, work

    def _run_interval(self, window: _Window, last_step: int, every: int, bar: tqdm) -> bool:
        data_start = time.perf_counter()
        for batch in self.loader.iter_from(self.batches_done):
            window.data_s += time.perf_counter() - data_start
            window.skipped.update(batch.pop(SKIPPED_KEY, {}))
            window.last_skipped = batch.pop(LAST_SKIPPED_KEY, "") or window.last_skipped
            window.samples += batch["input_ids"].shape[0]
            loss, work = self.micro_step(batch)
            window.text_tokens += work["text_tokens"]
            window.image_tokens += work["image_tokens"]
            window.flops += work["flops"]
            if loss is None:
                self._on_nonfinite()
            else:
                self.nonfinite_in_row = 0
                window.loss_sum += loss.detach().float()
                window.micro_batches += 1
            self.batches_done += 1
            if self.batches_done % self.accum == 0:
                self.step += 1
                bar.update(1)
                if self.step == 1 or self.step % self.train_cfg.log_every_n_steps == 0 or self.step == last_step:
                    self.log(window)
                    window.reset()
                    # Without the per-micro-step check, signals are agreed on at log steps.
                    if not self.train_cfg.max_nonfinite_steps and self._stop_requested():
                        return False
                if self._stop_agreed:
                    return False
                if every and self.step % every == 0 and self.step != last_step:
                    self.save()
            data_start = time.perf_counter()
        return True

    def _on_nonfinite(self) -> None:
        self.nonfinite_total += 1
        self.nonfinite_in_row += 1
        limit = self.train_cfg.max_nonfinite_steps
        if self.rank == 0:  # agreed on by all ranks: one line
            logger.warning("step %d, micro-batch %d of interval %d: NaN/inf loss, batch skipped (%d in a row, "
                           "%d in all)", self.step + 1, self.batches_done, self.interval, self.nonfinite_in_row,
                           self.nonfinite_total)
        if self.nonfinite_in_row >= limit:
            latest = checkpoint.latest_tag(self.paths.checkpoint_dir)
            raise RuntimeError(
                f"{self.nonfinite_in_row} micro-batches in a row had a NaN/inf loss "
                f"(--train.max_nonfinite_steps={limit}); stopping without saving, so the last checkpoint "
                f"({latest or 'none yet'}) stays the latest good one. Resume from it with a lower "
                f"--task.opt.learning_rate, clipping (gradient_clipping) or fp32/bf16 instead of fp16")

    def log(self, window: _Window) -> None:
        elapsed = time.perf_counter() - window.start
        stats = torch.tensor(
            [window.loss_sum.item(), window.micro_batches, window.samples, window.text_tokens,
             window.image_tokens, window.flops, window.data_s, elapsed], dtype=torch.float64,
        )
        dist.all_reduce(stats)
        loss_sum, micro, samples, tokens, image_tokens, flops, data_s, elapsed_sum = stats.tolist()
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, (window.skipped, window.last_skipped))
        skipped = sum((g[0] for g in gathered), Counter())
        self.last_skipped = next((g[1] for g in gathered if g[1]), self.last_skipped)
        self.skipped_total.update(skipped)
        self.samples_read += int(samples) + sum(skipped.values())
        wall = elapsed_sum / self.world_size
        loss = loss_sum / micro if micro else float("nan")
        lr = max(self.scheduler.get_last_lr())  # the peak group (others are layer-decayed)
        gnorm = self.grad_norm if self.own_grad_norm else self.engine.get_global_grad_norm()
        gnorm = float(gnorm) if gnorm is not None else float("nan")
        tflops_per_device = flops / wall / self.world_size / 1e12
        utilization = mfu(tflops_per_device, self.peak_tflops)
        record = {
            "step": self.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": gnorm,
            "samples_per_s": samples / wall,
            "text_tokens_per_s": tokens / wall,
            "image_tokens_per_s": image_tokens / wall,
            "tflops_per_device": tflops_per_device,
            "data_wait_pct": 100.0 * data_s / elapsed_sum,
            "skipped": float(sum(self.skipped_total.values())),
            "nonfinite": float(self.nonfinite_total),
        }
        if utilization is not None:
            record["mfu"] = utilization
        if torch.cuda.is_available():
            record["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        logger.info(
            "interval %d | step %d/%d | loss %.4f | lr %.2e | gnorm %.3f | %.1f samp/s | "
            "%.0f tok/s | %.0f img tok/s | %.3g TFLOP/s/dev%s | data-wait %.0f%% | skipped %d",
            self.interval, self.step, self.plan.total_steps, loss, lr, gnorm, record["samples_per_s"],
            record["text_tokens_per_s"], record["image_tokens_per_s"], tflops_per_device,
            f" | MFU {100 * utilization:.1f}%" if utilization is not None else "",
            record["data_wait_pct"], record["skipped"],
        )
        self.sink.scalars(self.step, {
            "interval": self.interval,
            **{f"train/{k}": v for k, v in record.items() if k != "step"},
            **{f"data/skipped_{k}": v for k, v in self.skipped_total.items()},
        })
        skipped_n = sum(self.skipped_total.values())
        if self.samples_read >= 20 and skipped_n > self.data_cfg.max_skip_fraction * self.samples_read:
            raise RuntimeError(
                f"{skipped_n} of {self.samples_read} samples read were unusable "
                f"({dict(self.skipped_total)}), over --data.train.max_skip_fraction="
                f"{self.data_cfg.max_skip_fraction}. Latest: {self.last_skipped}"
            )
