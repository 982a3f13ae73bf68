"""The real DeepSpeed engine through the CLI and the real `deepspeed` launcher on CPU ranks."""
import glob
import json
import os
import subprocess
import sys

import pytest

from pixparse.engine.dist import free_port
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(REPO, ".cache", "torch_extensions"))
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _args(shards, out, ds_config, experiment, *extra):
    return [
        "--deepspeed_config", f"{REPO}/ds_configs/{ds_config}.json",
        "--data.train.source", shards, "--data.train.batch_size", "2",
        "--data.train.num_samples", "64", "--data.train.num_workers", "1",
        "--task.model_name", "cruller_tiny", "--task.opt.learning_rate", "2e-3",
        "--train.output_dir", str(out), "--train.experiment", experiment,
        "--train.log_every_n_steps", "4", *extra,
    ]


def deepspeed_two_ranks(*args: str) -> list[str]:
    """`deepspeed --num_gpus 2 launch/train.py ARGS` on a free port."""
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
            "--master_port", str(free_port()), f"{REPO}/launch/train.py", *args]


def two_ranks(*args: str, script: str = f"{REPO}/launch/train.py") -> list[str]:
    """2 ranks of SCRIPT ARGS started by tests/helpers/spawn_ranks.py: for the tests of the engine
    (the deepspeed launcher and the launch scripts have tests of their own)."""
    return [sys.executable, f"{REPO}/tests/helpers/spawn_ranks.py", "2", str(free_port()), script, *args]


def _run(cmd, timeout=300, env=None):
    proc = subprocess.run(cmd, cwd=REPO, env={**_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def _metrics(out, experiment):
    with open(os.path.join(out, experiment, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("ds_config", ["zero3_bf16", *(pytest.param(c, marks=pytest.mark.long)
                                                       for c in ("zero2_bf16", "zero3_fp32"))])
def test_two_ranks_with_the_deepspeed_launcher_loss_falls(synth_shards, tmp_path, ds_config):
    """The design card's command (the deepspeed launcher, ZeRO-2/3) on 2 ranks, in an environment
    holding only what a plain `pip install .` installs (no extras): the loss falls, the optimizer
    state is sharded, the checkpoint exports."""
    cmd = deepspeed_two_ranks() + _args(synth_shards, tmp_path, ds_config, "two", "--task.num_intervals", "2",
                 "--train.tensorboard", "true", "--train.checkpoint_dir", str(tmp_path / "ckpt"))
    shm = set(glob.glob("/dev/shm/deepspeed_allreduce_buffer_*"))
    cmd[0] = plain_install_python(tmp_path / "plain")  # the launcher and its ranks: no extras installed
    proc = _run(cmd, env={"TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")})
    # DeepSpeed's shared-memory inference all-reduce is neither built (g++) nor mapped (/dev/shm).
    assert not (tmp_path / "ext" / "deepspeed_shm_comm").exists()
    assert set(glob.glob("/dev/shm/deepspeed_allreduce_buffer_*")) <= shm
    records = _metrics(tmp_path, "two")
    assert "all_gather_into_tensor` is deprecated" not in proc.stdout + proc.stderr  # DeepSpeed's, silenced
    assert "2 rank(s), 16 steps/interval" in proc.stdout
    assert f"ZeRO-{'3' if 'zero3' in ds_config else '1/2'} gradient norm fused" in proc.stdout
    assert records[-1]["step"] == 32
    losses = [r["train/loss"] for r in records]
    assert losses[-1] < losses[0] - 0.5, losses
    assert all(r["train/grad_norm"] > 0 for r in records)
    tag = tmp_path / "ckpt" / "two" / "step_00000032"
    assert len(glob.glob(str(tag / "*optim_states.pt"))) == 2  # optimizer state sharded per rank
    assert glob.glob(str(tmp_path / "two" / "tensorboard" / "events.out.tfevents.*"))
    _check_export(str(tag), tmp_path / "export")


def _install_closure(root: str = "pixparse") -> set[str]:
    """The distributions `pip install <root>` installs: its requirements without extras (the
    extras a requirement names, such as jsonargparse[signatures], included), and theirs."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        for text in reqs:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


def plain_install_python(folder) -> str:
    """A virtual environment holding what `pip install .` (no extras) installs: the installed
    distributions of the closure linked in, nothing else; pixparse from the checkout. Returns
    its python."""
    import venv
    from importlib.metadata import distribution

    venv.create(folder, with_pip=False, symlinks=True)
    lib = os.path.join(folder, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}", "site-packages")
    for name in _install_closure() - {"pixparse"}:
        dist = distribution(name)
        tops = {str(f).split("/")[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = os.path.join(str(dist.locate_file("")), top)
            if os.path.exists(src) and not os.path.exists(os.path.join(lib, top)):
                os.symlink(src, os.path.join(lib, top))
    with open(os.path.join(lib, "pixparse-checkout.pth"), "w") as f:
        f.write(REPO + "\n")
    return os.path.join(folder, "bin", "python")


def _check_export(tag_dir: str, out) -> None:
    """Export the sharded checkpoint; the plain and HF folders give the logits of the consolidated
    fp32 masters loaded straight from DeepSpeed's own zero_to_fp32."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from transformers import VisionEncoderDecoderModel

    from pixparse.app.export import export
    from pixparse.models.export import load_exported

    export(tag_dir, str(out), dtype="float32", hf=True)
    model, tokenizer, info = load_exported(str(out))
    masters = get_fp32_state_dict_from_zero_checkpoint(os.path.dirname(tag_dir), tag=os.path.basename(tag_dir))
    for k, v in model.state_dict().items():
        if "model." + k not in masters:
            assert k == "text_decoder.model.lm_head.weight", k  # tied: stored as the embedding
            continue
        assert torch.equal(v, masters["model." + k]), k
    h, w = model.cfg.image_encoder.image_size
    image = torch.randn(2, 1, h, w)
    ids = torch.randint(0, info["vocab_size"], (2, 12))
    with torch.no_grad():
        expected = model(image, ids, torch.ones_like(ids))
        hf = VisionEncoderDecoderModel.from_pretrained(str(out / "hf")).eval()
        assert torch.allclose(hf(pixel_values=image, decoder_input_ids=ids).logits, expected, atol=1e-5)


def _weights(tag_dir):
    import torch

    states = glob.glob(os.path.join(tag_dir, "mp_rank_00_model_states.pt"))
    assert states, f"no model states in {tag_dir}"
    return torch.load(states[0], map_location="cpu", weights_only=False)["module"]


@pytest.mark.parametrize("model", [
    [],
    pytest.param(["--task.model_name", "pix2struct_tiny", "--data.train.min_patches", "48"],  # budgets: sample RNG
                 marks=pytest.mark.long),
    pytest.param(["--task.model_name", "pali_tiny"], marks=pytest.mark.long),
])
def test_resume_mid_interval_reaches_the_same_parameters(synth_shards, tmp_path, model):
    """One process, fp32: a run saving every 8 steps (keeping 2) and one resumed from its step-56
    checkpoint, mid-way through the second interval, end bit-identical (every model family). The
    run leaves its record files; reusing its name without --train.resume is refused."""
    import torch

    train = [sys.executable, "-m", "pixparse.app.train"]
    common = ["--task.num_intervals", "2", *model]
    proc = _run(train + _args(synth_shards, tmp_path, "zero2_fp32", "full", *common,
                              "--train.checkpoint_every_n_steps", "8", "--train.keep_last_k", "2"))
    ckpt = tmp_path / "full" / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("step_*")) == ["step_00000056", "step_00000064"]
    assert (ckpt / "latest").read_text().strip() == "step_00000064"
    mid = ckpt / "step_00000056"
    state = json.loads((mid / "pixparse_state.json").read_text())
    assert (state["interval"], state["batches_done"]) == (1, 24)
    if not model:  # what a run leaves, and a second run under its name
        assert "ZeRO-1/2 gradient norm fused" in proc.stdout and "collectives done locally" in proc.stdout
        for name in ("config.yaml", "ds_config.json", "model_config.json", "run_info.json", "out.log"):
            assert (tmp_path / "full" / name).is_file()
        info = json.loads((tmp_path / "full" / "run_info.json").read_text())
        assert info["world_size"] == 1 and info["deepspeed"] and "git_sha" in info
        ds = json.loads((tmp_path / "full" / "ds_config.json").read_text())
        assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["train_batch_size"] == 2
        again = subprocess.run(train + _args(synth_shards, tmp_path, "zero2_fp32", "full"), cwd=REPO, env=_env(),
                               capture_output=True, text=True, timeout=120)
        assert again.returncode != 0 and "already has checkpoints" in again.stderr + again.stdout
    _run(train + _args(synth_shards, tmp_path, "zero2_fp32", "resumed", *common, "--train.resume", str(mid)))
    full = _weights(ckpt / "step_00000064")
    resumed = _weights(tmp_path / "resumed" / "checkpoints" / "step_00000064")
    assert full.keys() == resumed.keys()
    different = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert not different, different
    steps = [r["step"] for r in _metrics(tmp_path, "resumed")]
    assert steps[0] == 60 and steps[-1] == 64


@pytest.mark.parametrize("signame", ["SIGTERM", pytest.param("SIGUSR1", marks=pytest.mark.long)])
def test_sigterm_checkpoints_and_stops(synth_shards, tmp_path, signame):
    import signal

    cmd = [sys.executable, "-m", "pixparse.app.train"] + _args(
        synth_shards, tmp_path, "zero2_fp32", "pre", "--task.num_intervals", "200",
        "--train.log_every_n_steps", "1000")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "step 1/" in line:  # the next log step is 1000: the stop must not wait for it
            proc.send_signal(getattr(signal, signame))
            break
    out, _ = proc.communicate(timeout=120)
    text = "".join(lines) + out
    assert proc.returncode == 75, text[-3000:]  # EX_TEMPFAIL: requeue
    assert "stopped on signal" in text
    ckpt = tmp_path / "pre" / "checkpoints"
    tag = (ckpt / "latest").read_text().strip()
    state = json.loads((ckpt / tag / "pixparse_state.json").read_text())
    assert 1 <= state["step"] < 100, state  # agreed on within a step or so, not at a log step

    # A requeued job passes --train.resume auto and goes on from there.
    cmd2 = [sys.executable, "-m", "pixparse.app.train"] + _args(
        synth_shards, tmp_path, "zero2_fp32", "pre", "--task.num_intervals", "1", "--train.resume", "auto")
    proc2 = subprocess.run(cmd2, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert "resuming from latest" in proc2.stdout


@pytest.mark.long
def test_zero3_offload_trains(synth_shards, tmp_path):
    """Parameters and optimizer offloaded to CPU (DeepSpeedCPUAdam, JIT-compiled once)."""
    _run([sys.executable, "-m", "pixparse.app.train"]
         + _args(synth_shards, tmp_path, "zero3_offload_bf16", "off", "--task.num_intervals", "1"), timeout=600)
    losses = [r["train/loss"] for r in _metrics(tmp_path, "off")]
    assert losses[-1] < losses[0] - 0.5, losses


def _cpu_computes_fp16() -> bool:
    proc = subprocess.run([sys.executable, "-c", "from deepspeed.accelerator import get_accelerator; "
                           "print(get_accelerator().is_fp16_supported())"], env=_env(), capture_output=True, text=True)
    return proc.stdout.strip().endswith("True")


@pytest.mark.long  # the suite's short version: test_config.py's fp16 test (in-process)
def test_fp16_on_cpu_fails_before_training(synth_shards, tmp_path):
    if _cpu_computes_fp16():
        pytest.skip("this CPU computes fp16 natively (AVX512-FP16/AMX-FP16): DeepSpeed accepts fp16 here")
    cmd = [sys.executable, "-m", "pixparse.app.train"] + _args(synth_shards, tmp_path, "zero2_fp16", "fp16")
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "enables fp16" in proc.stderr + proc.stdout
    assert not (tmp_path / "fp16").exists()  # nothing started


def _script_env(ds_config):
    return {"PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "MASTER_PORT": str(free_port()),
            "DS_CONFIG": f"ds_configs/{ds_config}.json"}


def test_torchrun_script_two_ranks(synth_shards, tmp_path):
    """launch/torchrun.sh as written (standalone rendezvous, one node)."""
    args = _args(synth_shards, tmp_path, "zero2_bf16", "tr", "--task.num_intervals", "1",
                 "--task.opt.grad_accum_steps", "2")[2:]  # the script sets --deepspeed_config (DS_CONFIG)
    proc = _run(["bash", "launch/torchrun.sh", "2", *args], env=_script_env("zero2_bf16"))
    assert "2 rank(s), 8 steps/interval" in proc.stdout + proc.stderr  # 64 / (2 x 2 x 2)
    assert _metrics(tmp_path, "tr")[-1]["step"] == 8
    ds = json.loads((tmp_path / "tr" / "ds_config.json").read_text())
    assert (ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (2, 8)


def test_multinode_script_with_a_localhost_hostfile(synth_shards, tmp_path):
    """launch/multinode_deepspeed.sh as written, with a one-node hostfile (localhost slots=2):
    the deepspeed launcher reads the hostfile and starts the node's 2 ranks (with one node it
    runs them locally instead of over pdsh: as far as one machine allows)."""
    (tmp_path / "hostfile").write_text("# one node\nlocalhost slots=2\n")
    # The launcher first checks the hosts by `ssh HOST hostname`; no ssh server here: this one
    # runs the command on this machine, as ssh to localhost would.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ssh").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == -* ]]; do shift 2; done\n'
                                          'shift\nexec bash -c "$*"\n')
    (tmp_path / "bin" / "ssh").chmod(0o755)
    args = _args(synth_shards, tmp_path, "zero2_fp32", "mn", "--task.num_intervals", "1")[2:]
    env = _script_env("zero2_fp32")
    env["PATH"] = f"{tmp_path / 'bin'}:{env['PATH']}"
    proc = _run(["bash", "launch/multinode_deepspeed.sh", str(tmp_path / "hostfile"), *args], env=env)
    out = proc.stdout + proc.stderr
    assert "2 rank(s), 16 steps/interval" in out and "--train.resume auto: no checkpoint, starting fresh" in out
    assert _metrics(tmp_path, "mn")[-1]["step"] == 16


def test_run_stops_when_too_many_samples_are_bad(tmp_path):
    import io

    from PIL import Image

    from pixparse.data.write import write_shards

    buf = io.BytesIO()
    Image.new("L", (64, 80), 255).save(buf, format="PNG")
    good = json.dumps({"pages": [{"lines": {"text": ["fine text"]}}]}).encode()
    samples = [{"__key__": f"k{i:03d}", "json": good if i % 2 else b"{broken", "png": buf.getvalue()}
               for i in range(40)]
    write_shards(iter(samples), str(tmp_path / "bad-%06d.tar"), 40)
    cmd = [sys.executable, "-m", "pixparse.app.train"] + _args(
        str(tmp_path / "bad-000000.tar"), tmp_path, "zero2_fp32", "bad", "--data.train.num_samples", "32",
        "--data.train.max_skip_fraction", "0.2")
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "over --data.train.max_skip_fraction=0.2" in text
    assert "bad-000000.tar:k0" in text and "(bad_json)" in text


@pytest.mark.parametrize("synthetic", [False, pytest.param(True, marks=pytest.mark.long)])
def test_bench_reports_throughput(synth_shards, tmp_path, synthetic):
    cmd = [sys.executable, "-m", "pixparse.cli", "bench"] + _args(
        synth_shards, tmp_path, "zero2_bf16", f"bench{synthetic}",
        "--synthetic_data", str(synthetic).lower(), "--steps", "20", "--warmup_steps", "2")
    proc = _run(cmd)
    report = json.loads(proc.stdout.strip().splitlines()[-1])  # the last line is the JSON
    assert report["steps"] == 20 and report["samples_per_s"] > 0 and report["tflops_per_device"] > 0
    assert report["dtype"] == "bfloat16" and report["mfu"] is None  # no peak known for CPUs
    assert "samples/s global | per device" in proc.stdout
    assert "one process: DeepSpeed's collectives done locally" in proc.stdout + proc.stderr
    assert (tmp_path / f"bench{synthetic}" / "bench.json").is_file()
    if synthetic:
        assert report["data_wait_pct"] < 5


def test_huggingface_pixparse_train_command_line_with_wandb_and_gallery(synth_shards, tmp_path):
    """huggingface/pixparse's README train command, flag for flag (local shards for its S3 URL, a
    tiny model and run length for CPU): no --deepspeed_config, --task.dtype bfloat16 fills the
    built-in ZeRO-2 config, --train.wandb (offline) and --train.log-eval-data log the metrics and a
    gallery of eval pages with their outputs."""
    cmd = [sys.executable, "-m", "pixparse.app.train",
           "--data.train.source", synth_shards, "--data.train.batch-size", "2",
           "--data.train.num-samples", "16", "--data.train.num-workers", "1",
           "--task.model-name", "cruller_tiny", "--task.opt.clip-grad-value", "1.0",
           "--task.opt.clip-grad-mode", "norm", "--task.opt.learning-rate", "3e-4",
           "--task.opt.grad-accum-steps", "1", "--task.opt.betas", "0.9", "0.98",
           "--task.dtype", "bfloat16", "--task.num-intervals", "1", "--task.num-warmup-intervals", "0",
           "--train.checkpoint-dir", str(tmp_path / "ckpt"), "--train.output-dir", str(tmp_path),
           "--train.experiment", "awesome_experiment", "--train.tensorboard", "True",
           "--train.log-eval-data", "True", "--train.wandb", "True", "--train.log-filename", "out.log",
           "--data.eval.source", synth_shards.replace("000003", "000001"), "--data.eval.num-samples", "3"]
    _run(cmd, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    run = tmp_path / "awesome_experiment"
    ds = json.loads((run / "ds_config.json").read_text())
    assert ds["bf16"]["enabled"] is True and ds["zero_optimization"]["stage"] == 2
    assert "precision bfloat16 (--task.dtype)" in (run / "out.log").read_text()
    assert os.path.isdir(tmp_path / "ckpt" / "awesome_experiment" / "step_00000008")

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0}).Reload()
    tags = events.Tags()
    assert {"eval_samples/0", "eval_samples/2"} <= set(tags["images"]), tags
    assert "eval/loss" in tags["scalars"] and "eval_samples/0/text_summary" in tags["tensors"]
    text = events.Tensors("eval_samples/0/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "prediction:" in text and "reference:" in text
    image = events.Images("eval_samples/0")[0]
    assert (image.height, image.width) == (128, 96)  # the page as the model sees it

    # W&B offline: the run's record file holds the same metric series; the gallery is a table
    (record,) = glob.glob(str(run / "wandb" / "offline-run-*" / "run-awesome_experiment.wandb"))
    data = open(record, "rb").read()
    assert all(k in data for k in (b"train/loss", b"train/lr", b"eval/loss", b"eval/cer", b"eval/image_gap"))
    (table,) = glob.glob(str(run / "wandb" / "offline-run-*" / "files" / "media" / "table" / "eval" / "*.json"))
    table = json.loads(open(table).read())
    assert table["columns"] == ["key", "page", "prediction", "reference"] and len(table["data"]) == 3
