"""Faults injected into real 2-rank runs: a full disk while saving, ..."""
import glob
import json
import os
import subprocess
import sys

import pytest

from pixparse.engine.dist import free_port

from tests.conftest import REPO
from tests.test_distributed import _args, _env, _metrics, _run, deepspeed_two_ranks, two_ranks

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path):
    """A 10 MiB tmpfs (one tiny-model checkpoint of 2 ranks takes ~6.5 MiB): needs root."""
    path = tmp_path / "disk"
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10M", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({proc.stderr.decode().strip()}): needs root")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_while_saving_is_a_clear_error_and_keeps_the_last_checkpoint(synth_shards, tmp_path, small_disk):
    cmd = two_ranks() + _args(synth_shards, tmp_path, "zero2_fp32", "full", "--task.num_intervals", "3",
                 "--data.train.num_samples", "16", "--train.checkpoint_dir", str(small_disk),
                 "--train.keep_last_k", "1")
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-3000:]
    assert "pixparse pretrain: error: saving checkpoint step_00000008 to" in text, text[-3000:]
    assert "not enough disk space" in text and "MiB are free there" in text
    assert "the last checkpoint step_00000004 is intact" in text
    ckpt = small_disk / "full"
    assert (ckpt / "latest").read_text().strip() == "step_00000004"
    assert (ckpt / "step_00000004" / "pixparse_state.json").is_file()
    assert not [d for d in os.listdir(ckpt) if d.endswith(".partial")]  # the failed tag is gone
    state = json.loads((ckpt / "step_00000004" / "pixparse_state.json").read_text())
    assert state["step"] == 4


@pytest.mark.parametrize("signame", ["SIGTERM", pytest.param("SIGUSR1", marks=pytest.mark.long)])
def test_sigterm_to_the_deepspeed_launcher_checkpoints_instead_of_orphaning_the_ranks(synth_shards, tmp_path,
                                                                                       signame):
    """`deepspeed` itself dies at once on SIGTERM (no handler for local runs); the ranks notice
    their launcher is gone, agree at the next log step, checkpoint and stop."""
    import signal
    import time

    cmd = deepspeed_two_ranks() + _args(synth_shards, tmp_path, "zero2_fp32", "orphan", "--task.num_intervals", "200",
                 "--train.log_every_n_steps", "1")
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while "step 3/" not in (tmp_path / "run.log").read_text():
            assert time.time() < deadline and proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.5)
        proc.send_signal(getattr(signal, signame))  # the runner only, not its process group
        proc.wait(timeout=30)
        # The ranks (in the runner's session) must finish by themselves, with a checkpoint.
        deadline = time.time() + 120
        while subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True).returncode == 0:
            assert time.time() < deadline, "ranks still running: orphaned"
            time.sleep(1)
    finally:
        subprocess.run(["pkill", "-9", "-s", str(proc.pid)], check=False)
        log.close()
    text = (tmp_path / "run.log").read_text()
    assert "launcher of this rank is gone" in text and "stopped on signal" in text, text[-3000:]
    ckpt = tmp_path / "orphan" / "checkpoints"
    tag = (ckpt / "latest").read_text().strip()
    state = json.loads((ckpt / tag / "pixparse_state.json").read_text())
    assert 3 <= state["step"] < 200 * 32


def _wait_for(predicate, timeout, what):
    import time

    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.parametrize("moment", ["rank_files_written", pytest.param("partial_created", marks=pytest.mark.long)])
def test_kill_9_of_all_ranks_during_a_save_leaves_a_complete_latest(synth_shards, tmp_path, moment):
    """Checkpoint every step; kill -9 every process of the job the moment a save is under way
    (its .partial folder exists, or holds the ranks' files): 'latest' names a complete tag, the
    next start reports and removes the partial one, and resuming goes on."""
    import glob
    import signal

    ckpt = tmp_path / "ckpt" / "kill"
    args = _args(synth_shards, tmp_path, "zero2_fp32", "kill", "--task.num_intervals", "2",
                 "--train.checkpoint_every_n_steps", "1", "--train.checkpoint_dir", str(tmp_path / "ckpt"),
                 "--train.keep_last_k", "2")
    cmd = two_ranks(*args)
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: len(glob.glob(str(ckpt / "step_*"))) >= 3 or proc.poll() is not None, 180, "3 saves")
        if moment == "partial_created":
            _wait_for(lambda: glob.glob(str(ckpt / "*.partial")), 60, "a save to start")
        else:
            _wait_for(lambda: glob.glob(str(ckpt / "*.partial" / "*optim_states.pt")), 60, "rank files")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        subprocess.run(["pkill", "-9", "-s", str(proc.pid)], check=False)
        log.close()
    assert glob.glob(str(ckpt / "*.partial")), "killed outside a save: the moment was missed"
    tag = (ckpt / "latest").read_text().strip()
    assert (ckpt / tag / "pixparse_state.json").is_file()  # latest names a complete tag

    resume = two_ranks(*args, "--train.resume", "latest", "--train.checkpoint_every_n_steps", "0")
    proc = subprocess.run(resume, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "a checkpoint whose save did not finish" in text and f"resumed from {ckpt / tag}" in text
    assert not glob.glob(str(ckpt / "*.partial"))
    assert (ckpt / "latest").read_text().strip() == "step_00000032"


def _nan_run(tmp_path, synth_shards, experiment, nan_at, *extra):
    args = _args(synth_shards, tmp_path, "zero2_fp32", experiment, "--task.num_intervals", "1",
                 "--train.log_every_n_steps", "1", "--train.max_nonfinite_steps", "3", *extra)
    cmd = two_ranks(*args, script=f"{REPO}/tests/helpers/nan_train.py")
    env = {**_env(), "NAN_AT": nan_at, "NAN_RANK": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_nan_loss_on_one_rank_is_skipped_on_all_and_too_many_stop_the_run(synth_shards, tmp_path):
    """NaN losses on rank 1 only (one run): at micro-batches 5 and 6 both ranks skip those batches
    (no backward: ZeRO's collectives stay matched), count them and train on; from micro-batch 12
    on, 3 in a row stop the run without saving, the last checkpoint intact and still `latest`."""
    proc = _nan_run(tmp_path, synth_shards, "nan", "5,6,12+", "--train.checkpoint_every_n_steps", "4")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    records = _metrics(tmp_path, "nan")
    # a step whose only batch was skipped has no loss (null: strict JSON); every other step's is finite
    bad_steps = [r["step"] for r, prev in zip(records[1:], records) if r["train/nonfinite"] > prev["train/nonfinite"]]
    assert bad_steps == [6, 7, 13, 14], bad_steps
    assert all((r["train/loss"] is None) == (r["step"] in bad_steps) for r in records)
    assert [r["train/nonfinite"] for r in records if r["step"] in (8, 12)] == [2, 2]  # trained on
    assert out.count("NaN/inf loss, batch skipped") == 5  # one line per skip (the stopping one too), rank 0
    assert "3 micro-batches in a row had a NaN/inf loss (--train.max_nonfinite_steps=3)" in out
    assert "(step_00000012) stays the latest good one" in out
    ckpt = tmp_path / "nan" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_00000012"
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith("step_")) == [
        "step_00000004", "step_00000008", "step_00000012"]


def _launch(ranks, script, *args):
    if ranks == 1:
        return [sys.executable, script, *args]
    return two_ranks(*args, script=script)


def _universal(tag_dir, out):
    """Per-parameter fp32 weights and Adam moments of a tag, as DeepSpeed's universal format has them."""
    import torch

    subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(tag_dir),
                    "--output_folder", str(out), "--inject_missing_state"], check=True, capture_output=True,
                   env=_env(), cwd=REPO)
    states = {}
    for path in sorted(out.glob("zero/*/*.pt")):
        value = torch.load(path, weights_only=False)
        states[f"{path.parent.name}/{path.stem}"] = value["param"] if isinstance(value, dict) else value
    return states


def _saved_states(tag_dir, out):
    """Per-parameter fp32 weights and Adam moments of a tag: a ZeRO tag's through DeepSpeed's
    universal format, a stage-0 tag's (nothing sharded) from its model states file."""
    import torch

    if glob.glob(str(tag_dir / "*optim_states.pt")):
        return _universal(tag_dir, out)
    saved = torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=False)
    states = {f"module/{k}": v for k, v in saved["module"].items()}
    for i, moments in saved["optimizer"]["state"].items():
        states.update({f"{i}/{k}": moments[k] for k in ("exp_avg", "exp_avg_sq")})
    return states


@pytest.mark.parametrize("stage,saved_on,resumed_on", [
    (3, 2, 1), *(pytest.param(*c, marks=pytest.mark.long) for c in ((3, 1, 2), (2, 2, 1), (2, 1, 2), (0, 2, 1), (0, 1, 2)))])
def test_elastic_resume_loads_exactly_the_saved_weights_and_optimizer(synth_shards, tmp_path, stage, saved_on,
                                                                      resumed_on):
    """Saved on one world size, resumed on the other (2 -> 1, 1 -> 2): the fp32 master weights and
    both Adam moments loaded (written straight back after the resume) equal, element for element,
    those saved."""
    import torch

    name = f"z{stage}_{saved_on}to{resumed_on}"
    args = _args(synth_shards, tmp_path, f"zero{stage}_fp32", name, "--data.train.num_samples", "16",
                 "--task.num_intervals", "1")
    _run(_launch(saved_on, f"{REPO}/launch/train.py", *args))
    tag = tmp_path / name / "checkpoints" / "step_" f"{16 // (2 * saved_on):08d}"
    args = _args(synth_shards, tmp_path, f"zero{stage}_fp32", name + "_back", "--data.train.num_samples", "16",
                 "--task.num_intervals", "2", "--train.resume", str(tag))
    proc = _run(_launch(resumed_on, f"{REPO}/tests/helpers/resave_after_resume.py", *args))
    assert f"checkpoint written by {saved_on} rank(s), resuming on {resumed_on}" in proc.stdout
    (back,) = (tmp_path / (name + "_back") / "checkpoints").glob("step_*")
    before, after = _saved_states(tag, tmp_path / f"{name}_u1"), _saved_states(back, tmp_path / f"{name}_u2")
    assert before.keys() == after.keys() and sum(k.endswith("/exp_avg_sq") for k in before) > 30, sorted(before)[:8]
    assert all(before[k].abs().sum() > 0 for k in before if k.endswith("/exp_avg_sq"))  # trained state
    different = [k for k in before if not torch.equal(before[k], after[k])]
    assert not different, (saved_on, resumed_on, different[:5])


def test_kill_9_of_one_rank_mid_interval_then_resume_is_bit_exact(synth_shards, tmp_path):
    """2 ranks, dropout in both towers and doc_aug on (so the restored RNG streams matter):
    kill -9 rank 1 mid-interval; the launcher ends the job (no hang); --train.resume latest goes
    on from the last checkpoint and ends with fp32 weights equal to an uninterrupted run's."""
    import signal
    import time

    import torch

    from tests.test_distributed import _weights

    preset = json.loads(open(f"{REPO}/pixparse/models/presets/cruller_tiny.json").read())
    preset["image_encoder"]["model_args"].update(proj_drop_rate=0.1, attn_drop_rate=0.1)
    preset["text_decoder"]["config"].update(dropout=0.1, attention_dropout=0.1)
    (tmp_path / "tiny_dropout.json").write_text(json.dumps(preset))

    def args(experiment, *extra):
        return _args(synth_shards, tmp_path, "zero2_fp32", experiment, "--task.num_intervals", "2",
                     "--task.model_name", str(tmp_path / "tiny_dropout.json"), "--data.train.image_pipeline",
                     "doc_aug", "--train.checkpoint_every_n_steps", "8", "--train.log_every_n_steps", "1", *extra)

    _run(two_ranks(*args("full")))
    log = open(tmp_path / "kill.log", "w")
    proc = subprocess.Popen(deepspeed_two_ranks(*args("kill")), cwd=REPO, env=_env(), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        metrics = tmp_path / "kill" / "metrics.jsonl"
        _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 11 or proc.poll() is not None,
                  240, "step 11")
        assert proc.poll() is None, "finished before the kill"
        rank1 = subprocess.run(["pgrep", "-s", str(proc.pid), "-f", "local_rank=1"], capture_output=True, text=True)
        os.kill(int(rank1.stdout.split()[0]), signal.SIGKILL)
        start = time.time()
        proc.wait(timeout=120)  # the launcher ends the whole job
        took = time.time() - start
    finally:
        subprocess.run(["pkill", "-9", "-s", str(proc.pid)], check=False)
        log.close()
    assert proc.returncode != 0 and took < 120
    ckpt = tmp_path / "kill" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_00000008"
    proc = _run(two_ranks(*args("kill", "--train.resume", "latest")))
    assert f"resumed from {ckpt / 'step_00000008'}/mp_rank_00_model_states.pt at step 8" in proc.stdout
    full, resumed = _weights(tmp_path / "full" / "checkpoints" / "step_00000032"), _weights(ckpt / "step_00000032")
    different = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert full.keys() == resumed.keys() and not different, different[:5]


_FAKE_SRUN = """#!/usr/bin/env bash
# emulated srun: SLURM_NTASKS copies of the command on this machine, each with its
# SLURM_PROCID/SLURM_LOCALID; pids to $SRUN_PIDS; the exit status is the first non-zero one.
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS_PER_NODE=$SLURM_NTASKS "$@" &
  pids+=($!)
done
echo "${pids[@]}" > "$SRUN_PIDS"
rc=0
for p in "${pids[@]}"; do wait "$p"; c=$?; if [ "$c" -ne 0 ] && [ "$rc" -eq 0 ]; then rc=$c; fi; done
exit $rc
"""
_FAKE_SCONTROL = """#!/usr/bin/env bash
# emulated scontrol: 'show hostnames' -> this machine; 'requeue ID' is recorded
case "$1" in
  show) echo 127.0.0.1 ;;
  requeue) echo "requeue $2" >> "$SCONTROL_LOG" ;;
esac
"""


def test_slurm_sbatch_usr1_checkpoints_exits_75_requeues_and_resumes(synth_shards, tmp_path):
    """launch/slurm.sbatch as written, under an emulated SLURM (srun starting 2 tasks with
    SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS, scontrol): USR1 reaching one rank only is agreed on,
    both checkpoint and exit 75, the script requeues; the requeued job resumes (auto) and finishes."""
    import signal

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", _FAKE_SRUN), ("scontrol", _FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**_env(), "PATH": f"{os.path.dirname(sys.executable)}:{bin_dir}:{os.environ['PATH']}",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[1]", "SLURM_NTASKS": "2",
           "MASTER_PORT": str(free_port()), "DS_CONFIG": "ds_configs/zero2_fp32.json",
           "SRUN_PIDS": str(tmp_path / "pids"), "SCONTROL_LOG": str(tmp_path / "scontrol.log")}
    flags = ["--data.train.source", synth_shards, "--data.train.batch_size", "2", "--data.train.num_samples", "512",
             "--data.train.num_workers", "1", "--task.model_name", "cruller_tiny", "--task.num_intervals", "1",
             "--train.output_dir", str(tmp_path), "--train.log_every_n_steps", "2"]
    log = open(tmp_path / "job1.log", "w")
    proc = subprocess.Popen(["bash", "launch/slurm.sbatch", *flags], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        metrics = tmp_path / "pixparse-4242" / "metrics.jsonl"
        _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 3 or proc.poll() is not None,
                  240, "training to start")
        assert proc.poll() is None, (tmp_path / "job1.log").read_text()[-3000:]
        rank1 = int((tmp_path / "pids").read_text().split()[1])
        os.kill(rank1, signal.SIGUSR1)  # one rank only
        proc.wait(timeout=180)
    finally:
        subprocess.run(["pkill", "-9", "-s", str(proc.pid)], check=False)
        log.close()
    text = (tmp_path / "job1.log").read_text()
    assert proc.returncode == 75, text[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    ckpt = tmp_path / "pixparse-4242" / "checkpoints"
    stopped_at = json.loads((ckpt / (ckpt / "latest").read_text().strip() / "pixparse_state.json").read_text())["step"]
    assert 0 < stopped_at < 128
    # the requeued job: same script, same job id
    env["MASTER_PORT"] = str(free_port())
    proc = subprocess.run(["bash", "launch/slurm.sbatch", *flags], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "--train.resume auto: resuming from latest" in proc.stdout
    assert f"at step {stopped_at}" in proc.stdout
    assert (ckpt / "latest").read_text().strip() == "step_00000128"
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]  # not requeued again
