"""What the engine costs against what a user would write instead: the same task module, batch
and synthetic data, one rank, each variant in a fresh process, interleaved rounds; each run's
step time is the mean over its timed window, the result the median over rounds.

    python benchmarks/bench_train.py --model cruller_tiny --batch_size 8 --rounds 3
    python benchmarks/bench_train.py --model cruller_base --batch_size 2 --steps 10 --warmup 3 --rounds 1 \
        --tokenizer ../shared/data/tokenizers/albert_spiece.model

Variants (--variants; dtype suffix _fp32 or _bf16):
  plain     a plain PyTorch loop: eager task module (pixparse's loss), torch AdamW with the engine's
            parameter groups, global-norm clipping 1.0, zero_grad(set_to_none); bf16 = autocast
            (what huggingface/pixparse did, minus its own bookkeeping)
  zero2/3   the engine: `pixparse bench --synthetic_data true` with ds_configs/zero{2,3}_{fp32,bf16}.json
  trainer   transformers' VisionEncoderDecoderModel (TimmWrapper + BART at the preset's sizes, built
            from config by pixparse's own HF export) trained by Seq2SeqTrainer (AdamW, clipping 1.0,
            no logging, no saving; timed from step begin to step end, its data fetch left out);
            bf16 = its bf16 flag (autocast)
Prints a table of step times and ratios against the plain loop of the same dtype, then one JSON
line with zero2_vs_plain, zero3_vs_plain, trainer_vs_plain (fp32; bf16 ones when run), and
saves it all (command, git sha, versions, CPU/GPU model) to --out. With a GPU every variant runs
on it (plain loop: the task moved there, autocast on cuda; phases: synchronized at each boundary).

--paired: on a machine whose speed drifts by more than the overhead being measured (a shared
2-vCPU VM drifts 10-40% between processes), each engine variant (and Seq2SeqTrainer, a plain step
run from its step callbacks) runs in one process with a plain loop on a copy of the same task,
steps alternated (the order flipped every pair); the result is the median of per-pair ratios.
--phases: ms per phase (forward, backward, step) of each; with --world_size N, the engine variants'
phases on rank 0 at 1 and N ranks (what N ranks add to backward and step is communication).

--world_size N: where users run, N ranks (torch.distributed.run, gloo on CPU, NCCL on GPUs), each
rank its own batch of --batch_size, every variant in a fresh launch, interleaved rounds, also at
1 rank for scaling (samples/s at N ranks over samples/s at 1). Variants: ddp (the plain loop under
DistributedDataParallel), fsdp (the plain loop under FSDP2, torch.distributed.fsdp.fully_shard on
every block of a ModuleList, then the whole task), zero0 / zero2 / zero3 (the engine's micro-step
with ds_configs/zero{0,2,3}_fp32.json; zero0 is fp32 only), zero2-unpatched / zero3-unpatched (the same with
--train.patch_deepspeed false: DeepSpeed's own ZeRO methods). A run's step time is the slowest
rank's mean over the timed window. Last line: zero2_vs_ddp, zero3_vs_fsdp, scaling_zero2,
scaling_ddp (and the others measured).

    python benchmarks/bench_train.py --world_size 2 --model cruller_tiny --batch_size 8 --threads 1
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


# ----------------------------------------------------------------- workers (one fresh process each)
def _device():
    """Where the plain loop runs: the GPU when there is one (the engine's choice too), else CPU."""
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _sync() -> None:
    """Wait for the GPU's queued work, so a phase's time is its own (a no-op on CPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _task_and_batch(args):
    import torch

    from pixparse.engine.dist import to_device
    from pixparse.tasks.config import TaskConfig
    from pixparse.tasks.registry import create_task

    torch.manual_seed(0)
    task = create_task(TaskConfig(model_name=args.model, tokenizer=args.tokenizer)).to(_device())
    batch = task.synthetic_batch(args.batch_size, torch.Generator().manual_seed(0))
    return task, to_device(batch, _device())


def plain_loop(model, dtype: str, task=None):
    """One step of the plain loop on `model` (the task, or its DDP/FSDP wrapper; `task`: the task
    inside, whose parameter groups the optimizer takes) as a function of the batch."""
    import torch

    from pixparse.engine.optim import create_optimizer
    from pixparse.tasks.config import OptimConfig

    task = task or model
    model.train()
    opt = create_optimizer(task, OptimConfig())
    params = [p for p in task.parameters() if p.requires_grad]
    device_type = _device().type

    def step(batch) -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = model(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the engine's step ends with the loss known too

    return step


def worker_plain(args, dtype: str) -> list[float]:
    task, batch = _task_and_batch(args)
    step = plain_loop(task, dtype)
    times = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - start)
    return times[args.warmup:]


def worker_trainer(args, dtype: str, paired: bool = False) -> tuple[list[float], list[float]]:
    """Seq2SeqTrainer's step times; `paired`: with a plain loop step (on a copy of the same task)
    next to each of its steps, before it on even steps and after it on odd ones (the plain loop's
    times second, else empty)."""
    import copy

    import torch
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

    from pixparse.models.export import to_hf_vision_encoder_decoder

    task, batch = _task_and_batch(args)
    plain_step, plain_batch = (plain_loop(copy.deepcopy(task), dtype), batch) if paired else (None, None)
    model = to_hf_vision_encoder_decoder(task.model, task.export_info()["decoder_start_token_id"]).train()
    # Seq2SeqTrainer would pass num_items_in_batch, which VisionEncoderDecoderModel hands on to
    # TimmWrapper's forward_features (a TypeError in transformers 5.x): the plain mean loss, then.
    model.accepts_loss_kwargs = False
    batch = {k: v.cpu() if hasattr(v, "cpu") else v for k, v in batch.items()}  # the Trainer moves them
    pixels = task.normalize(batch["image"]).detach()
    # decoder_input_ids are the labels shifted right by the start token: feed ours directly
    item = {"pixel_values": pixels[0], "decoder_input_ids": batch["input_ids"][0],
            "decoder_attention_mask": batch["attention_mask"][0], "labels": batch["labels"][0].roll(-1)}

    class Repeat(torch.utils.data.Dataset):
        def __len__(self):
            return 10**6

        def __getitem__(self, i):
            return item

    times: list[float] = []
    plain_times: list[float] = []

    def plain(when: int) -> None:
        if plain_step is not None and len(times) % 2 == when:
            start = time.perf_counter()
            plain_step(plain_batch)
            plain_times.append(time.perf_counter() - start)

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            plain(0)
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.start)
            plain(0)  # len(times) grew: an odd step's plain step comes after it

    out = tempfile.mkdtemp()
    targs = Seq2SeqTrainingArguments(
        output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.warmup + args.steps,
        learning_rate=3e-4, max_grad_norm=1.0, weight_decay=0.02, adam_beta2=0.98, adam_epsilon=1e-6,
        lr_scheduler_type="constant", logging_strategy="no", save_strategy="no", report_to=[],
        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), bf16=dtype == "bf16", disable_tqdm=True, seed=0,
    )
    Seq2SeqTrainer(model=model, args=targs, train_dataset=Repeat(), callbacks=[Clock()]).train()
    return times[args.warmup:], plain_times[args.warmup:]


def paired_trainer(args, dtype: str) -> dict[str, float]:
    """Seq2SeqTrainer's step and the plain loop's, alternated in one process (the order flipped
    every pair), as paired_engine does for the engine."""
    trainer_t, plain_t = worker_trainer(args, dtype, paired=True)
    return _pair_record(trainer_t, plain_t, _device())


def _pair_record(variant_t: list[float], plain_t: list[float], variant_device) -> dict:
    """A paired run's result: medians of both sides' step times and of the per-pair ratios."""
    return {"plain_s": statistics.median(plain_t), "engine_s": statistics.median(variant_t),
            "ratio": statistics.median(v / p for v, p in zip(variant_t, plain_t)), "pairs": len(plain_t),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "plain_device": str(_device()),
            "engine_device": str(variant_device)}


def _bench_flags(args, stage: int, dtype: str, *extra: str) -> list[str]:
    """`pixparse bench` flags: the engine with <--ds_configs>/zero{stage}_{dtype}.json on args' model,
    batch and tokenizer, synthetic data."""
    flags = ["--synthetic_data", "true", "--deepspeed_config", f"{args.ds_configs}/zero{stage}_{dtype}.json",
             "--data.train.source", "unused.tar", "--data.train.num_samples", str(args.batch_size * 64),
             "--data.train.batch_size", str(args.batch_size), "--task.model_name", args.model,
             "--train.output_dir", tempfile.mkdtemp(), "--train.progress_bar", "false", *extra]
    if args.tokenizer:
        flags += ["--task.tokenizer", args.tokenizer]
    return flags


def _ds_env() -> dict[str, str]:
    """The environment with DeepSpeed's accelerator: the caller's choice, else the GPU when there
    is one, else the CPU."""
    import torch

    env = dict(os.environ)
    if "DS_ACCELERATOR" not in env and not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"
    return env


def _engine_setup(args, stage: int, dtype: str, *extra: str):
    """(config, setup) of `pixparse bench` in this process: the task built as the CLI builds it."""
    from pixparse.app.run import setup_run
    from pixparse.cli import parse

    cfg = parse(["bench", *_bench_flags(args, stage, dtype, *extra)])[1]
    return cfg, setup_run(cfg, read_shards=False)


def _trainer(cfg, setup):
    """The engine around the set-up task, without a loader."""
    import dataclasses

    from pixparse.engine.train import Trainer

    return Trainer(setup.task, cfg.data.train, cfg.train, cfg.task.opt, setup.plan, cfg.task.num_intervals,
                   setup.ds_config, setup.paths, dataclasses.asdict(cfg), build_loader=False)


def worker_engine(args, stage: int, dtype: str) -> list[float]:
    """The real CLI; the bench window gives the mean step time of --steps steps."""
    cmd = [sys.executable, "-m", "pixparse.cli", "bench", *_bench_flags(args, stage, dtype),
           "--warmup_steps", str(args.warmup), "--steps", str(args.steps)]
    env = _ds_env()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return [report["step_s"]]


def _phase_table(name: str, phases: dict[str, list[float]], warmup: int) -> dict[str, float]:
    out = {k: 1000 * statistics.mean(v[warmup:]) for k, v in phases.items()}
    out["total"] = sum(out.values())
    return out


def phases_plain(args, dtype: str) -> dict[str, float]:
    """ms per step of each phase of the plain loop."""
    import torch

    from pixparse.engine.optim import create_optimizer
    from pixparse.tasks.config import OptimConfig

    task, batch = _task_and_batch(args)
    task.train()
    opt = create_optimizer(task, OptimConfig())
    params = [p for p in task.parameters() if p.requires_grad]
    phases: dict[str, list[float]] = {"forward": [], "backward": [], "clip": [], "optimizer": []}
    device_type = _device().type
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = task(batch)["loss"]
        _sync()
        t1 = time.perf_counter()
        loss.backward()
        _sync()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        _sync()
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        t4 = time.perf_counter()
        for k, a, b in (("forward", t0, t1), ("backward", t1, t2), ("clip", t2, t3), ("optimizer", t3, t4)):
            phases[k].append(b - a)
    return _phase_table("plain", phases, args.warmup)


def phases_engine(args, stage: int, dtype: str) -> dict[str, float]:
    """ms per step of each phase of the engine's micro-step (1 rank, in this process)."""
    import torch

    from pixparse.engine.dist import to_device

    trainer = _trainer(*_engine_setup(args, stage, dtype))
    engine = trainer.engine
    engine.train()
    batch = trainer.task.synthetic_batch(args.batch_size, torch.Generator().manual_seed(0))
    phases: dict[str, list[float]] = {"bookkeeping": [], "forward": [], "nonfinite check": [], "backward": [],
                                      "step (reduce, clip, optimizer)": []}
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        trainer.task.batch_stats(batch)
        b = to_device(batch, engine.device)
        t1 = time.perf_counter()
        loss = engine(b)["loss"]
        _sync()
        t2 = time.perf_counter()
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)
        if torch.distributed.get_world_size() > 1:  # as Trainer.micro_step does it
            torch.distributed.all_reduce(bad)
        bad.item()
        t3 = time.perf_counter()
        engine.backward(loss)
        _sync()
        t4 = time.perf_counter()
        engine.step()
        loss.item()
        t5 = time.perf_counter()
        for k, a, z in (("bookkeeping", t0, t1), ("forward", t1, t2), ("nonfinite check", t2, t3),
                        ("backward", t3, t4), ("step (reduce, clip, optimizer)", t4, t5)):
            phases[k].append(z - a)
    return _phase_table(f"zero{stage}", phases, args.warmup)


def paired_engine(args, stage: int, dtype: str) -> dict[str, float]:
    """The engine's micro-step and the plain loop's step, alternated step by step in one process
    (each on its own copy of the same task), so both see the same machine state: the ratio is
    taken per pair, then the median over pairs."""
    import copy

    import torch

    from pixparse.engine.dist import to_device

    # the plain loop's copy needs whole parameters: no partitioned build
    cfg, setup = _engine_setup(args, stage, dtype, "--train.zero_init", "false")
    plain = copy.deepcopy(setup.task).to(_device())  # before DeepSpeed touches the original
    plain_step = plain_loop(plain, dtype)
    trainer = _trainer(cfg, setup)
    trainer.engine.train()
    batch = to_device(plain.synthetic_batch(args.batch_size, torch.Generator().manual_seed(0)), _device())

    def engine_step(batch) -> None:
        trainer.micro_step(batch)[0].item()

    times: dict[str, list[float]] = {"plain": [], "engine": []}
    for i in range(args.warmup + args.steps):
        order = (("plain", plain_step), ("engine", engine_step))
        for name, step in order if i % 2 == 0 else order[::-1]:  # neither always goes first
            start = time.perf_counter()
            step(batch)
            times[name].append(time.perf_counter() - start)
    plain_t, engine_t = times["plain"][args.warmup:], times["engine"][args.warmup:]
    return _pair_record(engine_t, plain_t, trainer.engine.device)


# ----------------------------------------------------------------- N ranks (one launch per run)
DIST_VARIANTS = ("ddp", "fsdp", "zero0", "zero2", "zero3", "zero2-unpatched", "zero3-unpatched")


def _shard_blocks(task) -> None:
    """FSDP2 as a user applies it: each block of every ModuleList (bottom-up), then the root."""
    import torch
    from torch.distributed.fsdp import fully_shard

    for module in reversed(list(task.modules())):
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                fully_shard(block)
    fully_shard(task)


def dist_step(args, kind: str, dtype: str):
    """(step function of a batch, this rank's batch) for one rank of an N-rank run."""
    import torch
    import torch.distributed as tdist

    from pixparse.engine.dist import to_device

    if kind in ("ddp", "fsdp"):
        tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        task, _ = _task_and_batch(args)
        if kind == "ddp":
            model = torch.nn.parallel.DistributedDataParallel(task)
        else:
            _shard_blocks(task)
            model = task
        step = plain_loop(model, dtype, task)
    else:
        stage = int(kind[4])
        extra = ("--train.patch_deepspeed", "false") if kind.endswith("unpatched") else ()
        cfg, setup = _engine_setup(args, stage, dtype, *extra)
        trainer = _trainer(cfg, setup)
        trainer.engine.train()
        task = setup.task

        def step(batch) -> None:
            trainer.micro_step(batch)[0].item()
    batch = task.synthetic_batch(args.batch_size, torch.Generator().manual_seed(tdist.get_rank()))
    return step, (batch if kind.startswith("zero") else to_device(batch, _device()))


def worker_dist(args, kind: str, dtype: str) -> None:
    """One rank: warm-up, then the timed window; rank 0 prints the slowest rank's mean step time."""
    import torch
    import torch.distributed as tdist

    step, batch = dist_step(args, kind, dtype)
    for _ in range(args.warmup):
        step(batch)
    _sync()
    tdist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(batch)
    _sync()
    mean = torch.tensor((time.perf_counter() - start) / args.steps, dtype=torch.float64)
    tdist.all_reduce(mean, op=tdist.ReduceOp.MAX)
    if tdist.get_rank() == 0:
        print(json.dumps({"variant": args.worker, "step_s": mean.item(), "steps": args.steps,
                          "world_size": tdist.get_world_size()}))


def spawn_dist(args, variant: str, ranks: int, worker: str = "dist") -> dict:
    """One launch of `variant` on `ranks` ranks; rank 0's JSON line."""
    from pixparse.engine.dist import free_port

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
           str(free_port()), __file__, "--worker", f"{worker}:{variant}", *_worker_flags(args)]
    env = {**_ds_env(), "OMP_NUM_THREADS": str(args.threads or max(1, (os.cpu_count() or 1) // ranks))}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{variant} on {ranks} rank(s) failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return json.loads(next(line for line in reversed(proc.stdout.strip().splitlines()) if line.startswith("{")))


def run_world(args) -> None:
    """Every variant at 1 and N ranks, interleaved over rounds; the table, then the summary."""
    variants = args.variants.split(",") if args.variants != DEFAULT_VARIANTS else \
        [f"{v}_fp32" for v in DIST_VARIANTS]
    for v in variants:
        if v.rsplit("_", 1)[0] not in DIST_VARIANTS:
            sys.exit(f"--variants {v}: with --world_size the variants are {', '.join(DIST_VARIANTS)} (+ _fp32/_bf16)")
    counts = sorted({1, args.world_size})
    results: dict[str, list[float]] = {f"{v}@{n}": [] for n in counts for v in variants}
    for r in range(args.rounds):
        for n in counts:
            for v in variants:
                step = spawn_dist(args, v, n)["step_s"]
                results[f"{v}@{n}"].append(step)
                print(f"round {r + 1}/{args.rounds} {v} on {n} rank(s): {step:.4f} s/step", file=sys.stderr, flush=True)
    median = {k: statistics.median(t) for k, t in results.items()}
    sps = {k: int(k.rsplit("@", 1)[1]) * args.batch_size / s for k, s in median.items()}
    n = args.world_size
    print(f"model {args.model}, batch {args.batch_size} per rank, {args.steps} timed steps ({args.warmup} warm-up), "
          f"{args.rounds} round(s), median of rounds; slowest rank's mean step")
    print(f"| variant | step s @1 | step s @{n} | samples/s @{n} | scaling |\n|---|---|---|---|---|")
    for v in variants:
        print(f"| {v} | {median[f'{v}@1']:.4f} | {median[f'{v}@{n}']:.4f} | {sps[f'{v}@{n}']:.3g} | "
              f"{sps[f'{v}@{n}'] / sps[f'{v}@1']:.3f} |")
    summary = {}
    for dtype in ("fp32", "bf16"):  # the keys of fp32 bare, bf16's with a suffix
        suffix = "" if dtype == "fp32" else "_bf16"
        for engine, ref in (("zero2", "ddp"), ("zero3", "fsdp"), ("zero3", "ddp"), ("zero2", "zero2-unpatched"),
                            ("zero3", "zero3-unpatched")):
            a, b = f"{engine}_{dtype}@{n}", f"{ref}_{dtype}@{n}"
            if a in median and b in median:
                summary[f"{engine}_vs_{ref.replace('-', '_')}{suffix}"] = round(median[a] / median[b], 4)
    for v in variants:
        kind, dtype = v.rsplit("_", 1)
        summary[f"scaling_{kind.replace('-', '_')}{'' if dtype == 'fp32' else '_bf16'}"] = \
            round(sps[f"{v}@{n}"] / sps[f"{v}@1"], 4)
    record = {"summary": summary, "median_step_s": median, "samples_per_s": sps, "rounds": results,
              "args": {**vars(args), "variants": ",".join(variants)}, "command": " ".join(["python", *sys.argv]),
              "when": datetime.datetime.now().isoformat(timespec="seconds"), **_env_info()}
    save_result(args.out, f"bench_train_{n}ranks_{args.model}_b{args.batch_size}", record)


def run_worker(args) -> None:
    if args.worker.startswith("dist-phases:"):  # one rank of an N-rank engine run, phase by phase
        import torch.distributed as tdist

        kind, dtype = args.worker[len("dist-phases:"):].rsplit("_", 1)
        table = phases_engine(args, int(kind[-1]), dtype)
        if tdist.get_rank() == 0:
            print(json.dumps({"variant": args.worker, "phases_ms": table, "world_size": tdist.get_world_size()}))
        return
    if args.worker.startswith("dist:"):
        kind, dtype = args.worker[len("dist:"):].rsplit("_", 1)
        worker_dist(args, kind, dtype)
        return
    kind, dtype = args.worker.rsplit("_", 1)
    if args.paired:
        pair = paired_trainer(args, dtype) if kind == "trainer" else paired_engine(args, int(kind[-1]), dtype)
        print(json.dumps({"variant": args.worker, **pair}))
        return
    if args.phases:
        table = phases_plain(args, dtype) if kind == "plain" else phases_engine(args, int(kind[-1]), dtype)
        print(json.dumps({"variant": args.worker, "phases_ms": table}))
        return
    if kind == "plain":
        times = worker_plain(args, dtype)
    elif kind == "trainer":
        times = worker_trainer(args, dtype)[0]
    else:
        times = worker_engine(args, int(kind[-1]), dtype)
    # the mean over the timed window, as the engine's bench reports it
    print(json.dumps({"variant": args.worker, "step_s": statistics.mean(times), "steps": len(times)}))


# ----------------------------------------------------------------- driver
def _env_info() -> dict:
    import deepspeed
    import torch
    import transformers

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip() != ""
    return {"git_sha": sha, "git_dirty": dirty, "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "transformers": transformers.__version__, "cpu": cpu, "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def save_result(out_dir: str, stem: str, record: dict) -> None:
    """<out_dir>/<stem>_<time>.json with the record; the summary printed as the last JSON line."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{stem}_{datetime.datetime.now():%Y%m%d-%H%M%S}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"saved {path}", file=sys.stderr)
    print(json.dumps(record["summary"]))


def _worker_flags(args) -> list[str]:
    """The flags a worker process takes from the driver's arguments."""
    flags = ["--model", args.model, "--batch_size", str(args.batch_size), "--steps", str(args.steps),
             "--warmup", str(args.warmup), "--ds_configs", args.ds_configs]
    return flags + (["--tokenizer", args.tokenizer] if args.tokenizer else [])


def spawn(args, variant: str, *extra: str) -> dict:
    """Run one variant in a fresh process; its last stdout line (JSON)."""
    cmd = [sys.executable, __file__, "--worker", variant, *extra, *_worker_flags(args)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or os.cpu_count())}
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{variant} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_phases(args) -> None:
    if args.world_size:  # the engine's phases on 1 and N ranks: what N ranks add is communication
        tables = {f"{v}@{n}": spawn_dist(args, v, n, "dist-phases")["phases_ms"]
                  for v in args.variants.split(",") if v.startswith("zero") for n in sorted({1, args.world_size})}
    else:
        tables = {v: spawn(args, v, "--phases")["phases_ms"] for v in args.variants.split(",")
                  if not v.startswith("trainer")}
    print(f"ms per step, model {args.model}, batch {args.batch_size} per rank, rank 0, mean of {args.steps} steps")
    for v, t in tables.items():
        print(f"{v}: " + " | ".join(f"{k} {ms:.2f}" for k, ms in t.items()))
    print(json.dumps(tables))


def run_paired(args) -> None:
    variants = [v for v in args.variants.split(",") if not v.startswith("plain")]
    rows = {v: spawn(args, v, "--paired") for v in variants}
    print(f"model {args.model}, batch {args.batch_size}, 1 rank: engine micro-step (or Seq2SeqTrainer step) vs "
          f"plain loop step, alternated in one process, {args.steps} pairs ({args.warmup} warm-up), median of "
          f"per-pair ratios")
    print("| variant | plain s | variant s | variant / plain |\n|---|---|---|---|")
    for v, r in rows.items():
        print(f"| {v} | {r['plain_s']:.4f} | {r['engine_s']:.4f} | {r['ratio']:.3f}x |")
    summary = {f"{v.rsplit('_', 1)[0]}_vs_plain" + ("" if v.endswith("fp32") else "_bf16"): round(r["ratio"], 4)
               for v, r in rows.items()}
    record = {"summary": summary, "paired": rows, "args": vars(args),
              "command": " ".join(["python", *sys.argv]),
              "when": datetime.datetime.now().isoformat(timespec="seconds"), **_env_info()}
    save_result(args.out, f"bench_train_paired_{args.model}_b{args.batch_size}", record)


DEFAULT_VARIANTS = "plain_fp32,zero2_fp32,zero3_fp32,trainer_fp32"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cruller_tiny")
    p.add_argument("--tokenizer", default=None, help="--task.tokenizer (e.g. a SentencePiece model for base sizes)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed steps per run (>= 20 for the engine's bench)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--world_size", type=int, default=None,
                   help="instead: the engine against DDP and FSDP2 on this many ranks (and 1, for scaling)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of every variant (default: all cores)")
    p.add_argument("--omp_wait_policy", choices=["active", "passive"], default=None,
                   help="OMP_WAIT_POLICY of every variant (default: the environment's). Before the engine "
                        "made a one-process world's collectives local (pixparse/engine/dist.py), a 1-rank "
                        "ZeRO-3 engine's gloo threads started OpenMP teams of their own; with more OpenMP "
                        "threads than cores libgomp stopped spinning at barriers and every multi-threaded op "
                        "in the process slowed (a plain cruller_tiny step 33 -> 64 ms). 'active' keeps "
                        "threads spinning: a check that no such waiting effect is left")
    p.add_argument("--ds_configs", default=os.path.join(REPO, "ds_configs"),
                   help="folder of the engine variants' zero{2,3}_{fp32,bf16}.json (to measure other settings)")
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    p.add_argument("--phases", action="store_true",
                   help="instead: ms per step of each phase (forward, backward, reduction/optimizer step, "
                        "bookkeeping) of the plain loop and the engine variants, in one round")
    p.add_argument("--paired", action="store_true",
                   help="instead: each engine variant and the plain loop alternated step by step in one "
                        "process (same machine state for both; the ratio per pair, median over pairs)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        run_worker(args)
        return
    if args.phases:
        run_phases(args)
        return
    if args.paired:
        run_paired(args)
        return
    if args.world_size:
        run_world(args)
        return
    variants = args.variants.split(",")
    results: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):  # interleaved: drift hits every variant alike
        for v in variants:
            step = spawn(args, v)["step_s"]
            results[v].append(step)
            print(f"round {r + 1}/{args.rounds} {v}: {step:.4f} s/step", file=sys.stderr, flush=True)
    median = {v: statistics.median(t) for v, t in results.items()}
    rows = []
    for v in variants:
        base = median.get(f"plain_{v.rsplit('_', 1)[1]}")
        ratio = median[v] / base if base else None
        rows.append((v, median[v], args.batch_size / median[v], ratio, results[v]))
    print(f"model {args.model}, batch {args.batch_size}, 1 rank, {args.steps} timed steps "
          f"({args.warmup} warm-up), {args.rounds} round(s), median of rounds")
    print("| variant | step s | samples/s | vs plain (same dtype) | rounds |\n|---|---|---|---|---|")
    for v, s, sps, ratio, all_ in rows:
        print(f"| {v} | {s:.4f} | {sps:.1f} | {f'{ratio:.3f}x' if ratio else '-'} | "
              f"{', '.join(f'{x:.4f}' for x in all_)} |")
    summary = {}
    for dtype in ("fp32", "bf16"):
        base = median.get(f"plain_{dtype}")
        for kind in ("zero2", "zero3", "trainer"):
            if base and f"{kind}_{dtype}" in median:
                key = f"{kind}_vs_plain" + ("" if dtype == "fp32" else "_bf16")
                summary[key] = round(median[f"{kind}_{dtype}"] / base, 4)
    record = {"summary": summary, "median_step_s": median, "rounds": results, "args": vars(args),
              "command": " ".join([os.path.relpath(sys.executable, REPO) if sys.executable.startswith(REPO)
                                   else "python", *sys.argv]),
              "when": datetime.datetime.now().isoformat(timespec="seconds"), **_env_info()}
    save_result(args.out, f"bench_train_{args.model}_b{args.batch_size}", record)


if __name__ == "__main__":
    main()
