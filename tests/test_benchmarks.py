"""The training benchmark runs its variants in fresh processes, saves what a person needs to
compare runs, and plots saved results."""
import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO
from tests.test_distributed import _env


@pytest.mark.slow
@pytest.mark.long
def test_bench_train_runs_the_variants_and_saves_results(tmp_path):
    proc = subprocess.run(
        [sys.executable, f"{REPO}/benchmarks/bench_train.py", "--model", "cruller_tiny", "--batch_size", "2",
         "--steps", "20", "--warmup", "1", "--rounds", "1", "--threads", "1",
         "--variants", "plain_fp32,zero2_fp32,trainer_fp32", "--out", str(tmp_path)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary) == {"zero2_vs_plain", "trainer_vs_plain"} and all(v > 0 for v in summary.values())
    assert "| plain_fp32 |" in proc.stdout and "| trainer_fp32 |" in proc.stdout
    (saved,) = tmp_path.glob("bench_train_cruller_tiny_b2_*.json")
    record = json.loads(saved.read_text())
    assert record["summary"] == summary and len(record["git_sha"]) == 40 and record["cpu"]
    assert {"torch", "deepspeed", "transformers", "command"} <= set(record)

    out = tmp_path / "plot.png"
    subprocess.run([sys.executable, f"{REPO}/benchmarks/plot.py", str(saved), "--out", str(out)], check=True,
                   cwd=REPO, capture_output=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.long
def test_bench_train_world_size_compares_the_engine_with_ddp_and_fsdp2(tmp_path):
    """--world_size 2: FSDP2 and the engine's ZeRO-3 each launched on 1 and 2 ranks; the summary
    compares them and gives each one's scaling (DDP: the ZeRO settings benchmark's test)."""
    proc = subprocess.run(
        [sys.executable, f"{REPO}/benchmarks/bench_train.py", "--world_size", "2", "--model", "cruller_tiny",
         "--batch_size", "2", "--steps", "3", "--warmup", "1", "--rounds", "1", "--threads", "1",
         "--variants", "fsdp_fp32,zero3_fp32", "--out", str(tmp_path)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary) == {"zero3_vs_fsdp", "scaling_fsdp", "scaling_zero3"}
    assert all(v > 0 for v in summary.values())
    (saved,) = tmp_path.glob("bench_train_2ranks_cruller_tiny_b2_*.json")
    record = json.loads(saved.read_text())
    assert record["summary"] == summary and record["args"]["variants"] == "fsdp_fp32,zero3_fp32"
    assert set(record["median_step_s"]) == {f"{v}_fp32@{n}" for v in ("fsdp", "zero3") for n in (1, 2)}
    bad = subprocess.run([sys.executable, f"{REPO}/benchmarks/bench_train.py", "--world_size", "2", "--variants",
                          "plain_fp32"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--variants plain_fp32" in bad.stderr


@pytest.mark.slow
@pytest.mark.long
def test_bench_train_phases_on_one_and_two_ranks(tmp_path):
    """--phases on 1 and 2 ranks: the engine's phases on rank 0 of each."""
    proc = subprocess.run(
        [sys.executable, f"{REPO}/benchmarks/bench_train.py", "--phases", "--world_size", "2", "--model",
         "cruller_tiny", "--batch_size", "2", "--steps", "2", "--warmup", "1", "--threads", "1",
         "--variants", "zero2_fp32"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tables = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(tables) == {"zero2_fp32@1", "zero2_fp32@2"}
    assert all(t["backward"] > 0 and t["total"] >= t["forward"] + t["backward"] for t in tables.values())


def test_profile_reading_times_each_stage_of_a_loader_worker():
    """The reading profile's loader part: render, preprocess and collate of render:lines for the
    reader preset, each timed per sample."""
    sys.path.insert(0, f"{REPO}/benchmarks")
    from profile_reading import worker_cost

    cost = worker_cost("cruller_reader_tiny", "render:lines", 40, 16)
    assert {"render", "preprocess", "collate", "total", "samples_per_s"} == set(cost)
    assert all(cost[k] > 0 for k in ("render", "preprocess", "collate"))
    assert cost["total"] == pytest.approx(cost["render"] + cost["preprocess"] + cost["collate"])


@pytest.mark.slow
@pytest.mark.long
def test_bench_train_paired_alternates_engine_and_plain_and_plots(tmp_path):
    proc = subprocess.run(
        [sys.executable, f"{REPO}/benchmarks/bench_train.py", "--model", "cruller_tiny", "--batch_size", "2",
         "--steps", "6", "--warmup", "1", "--threads", "1", "--paired", "--variants",
         "zero2_fp32,zero3_fp32,trainer_fp32", "--omp_wait_policy", "active", "--out", str(tmp_path)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary) == {"zero2_vs_plain", "zero3_vs_plain", "trainer_vs_plain"}
    assert all(v > 0 for v in summary.values())
    (saved,) = tmp_path.glob("bench_train_paired_cruller_tiny_b2_*.json")
    record = json.loads(saved.read_text())
    for pair in record["paired"].values():
        assert pair["pairs"] == 6 and pair["plain_s"] > 0 and pair["engine_s"] > 0
        assert pair["omp_wait_policy"] == "active"  # what the variants ran under is saved
        assert pair["plain_device"] == pair["engine_device"] == "cpu"
    out = tmp_path / "plot.png"
    subprocess.run([sys.executable, f"{REPO}/benchmarks/plot.py", str(saved), "--out", str(out)], check=True,
                   cwd=REPO, capture_output=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_train_paired_runs_both_sides_on_the_gpu(tmp_path):
    """On a GPU the plain loop runs there too (a CPU plain loop would make any engine look fast)."""
    proc = subprocess.run(
        [sys.executable, f"{REPO}/benchmarks/bench_train.py", "--model", "cruller_tiny", "--batch_size", "4",
         "--steps", "10", "--warmup", "2", "--paired", "--variants", "zero2_bf16", "--out", str(tmp_path)],
        cwd=REPO, env={k: v for k, v in _env().items() if k != "DS_ACCELERATOR"}, capture_output=True,
        text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (saved,) = tmp_path.glob("bench_train_paired_cruller_tiny_b4_*.json")
    record = json.loads(saved.read_text())
    assert record["gpu"], record
    pair = record["paired"]["zero2_bf16"]
    assert pair["plain_device"].startswith("cuda") and pair["engine_device"].startswith("cuda"), pair
    # a 0.4M-parameter model: a CPU step is ~10 ms at batch 4, a GPU one a few ms
    assert 0.2 < pair["engine_s"] / pair["plain_s"] < 5, pair


def test_bench_loader_compares_both_decodes_with_the_reference_and_saves(shared_data, tmp_path):
    """A few real receipts and forms: every pipeline gives samples/s, one-process ms/sample and PSNR;
    exact keeps the reference's PSNR (the same filter), fast drafts JPEGs below it; token ids equal."""
    proc = subprocess.run(
        [sys.executable, f"{REPO}/benchmarks/bench_loader.py", "--data", shared_data, "--shards",
         str(tmp_path / "shards"), "--max_samples", "8", "--copies", "1", "--repeats", "1",
         "--formats", "sroie_jpg", "funsd_png", "--out", str(tmp_path / "results")],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(json.loads(proc.stdout.strip().splitlines()[-1])) == {"sroie_jpg", "funsd_png"}
    (saved,) = (tmp_path / "results").glob("bench_loader_*.json")
    rows = {r["format"]: r for r in json.loads(saved.read_text())["rows"]}
    for r in rows.values():
        assert r["same_token_ids"] and r["samples"] == 8
        assert all(r[f"{k}_samples_per_s"] > 0 for k in ("plain", "fast", "exact", "decode"))
        assert all(r[f"{k}_ms_per_sample_one_process"] > 0 for k in ("plain", "fast", "exact"))
        assert abs(r["exact_psnr_db"] - r["plain_psnr_db"]) < 0.5 and r["exact_psnr_db"] > 35
    assert rows["sroie_jpg"]["fast_psnr_db"] < rows["sroie_jpg"]["exact_psnr_db"]  # drafted JPEGs


@pytest.mark.slow
@pytest.mark.long
def test_bench_zero_settings_launches_each_setting_beside_ddp_and_fsdp2(tmp_path):
    """A chosen ZeRO setting runs from its own copy of the ds_config (the changed key recorded),
    beside DDP and FSDP2; the summary is each against DDP; an unknown setting is refused by name."""
    proc = subprocess.run(
        [sys.executable, f"{REPO}/benchmarks/bench_zero_settings.py", "--model", "cruller_tiny", "--batch_size", "2",
         "--steps", "2", "--warmup", "1", "--rounds", "1", "--settings", "zero2 overlap_comm off",
         "--out", str(tmp_path)], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary) == {"ddp", "fsdp", "zero2 overlap_comm off"} and summary["ddp"] == 1.0
    (saved,) = tmp_path.glob("bench_zero_settings_2ranks_cruller_tiny_b2_*.json")
    assert json.loads(saved.read_text())["settings"] == {"zero2 overlap_comm off": {"overlap_comm": False}}
    bad = subprocess.run([sys.executable, f"{REPO}/benchmarks/bench_zero_settings.py", "--settings", "zero9"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--settings zero9: not a setting" in bad.stderr


def test_learning_curve_reports_the_first_step_that_reads_every_field_and_the_first_that_holds(tmp_path):
    """learning_check.sh EVALS=N: field_f1 after each interval from metrics.jsonl, joined to the eval
    app's metrics; a dip after the first 1.0 moves the held step, not the first."""
    (tmp_path / "eval.out").write_text("log line\n" + json.dumps({"field_f1": 1.0, "num_samples": 8}) + "\n")

    def curve(records):
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        proc = subprocess.run([sys.executable, f"{REPO}/benchmarks/learning_curve.py", str(tmp_path / "eval.out"),
                               str(tmp_path / "metrics.jsonl")], capture_output=True, text=True, check=True)
        return json.loads(proc.stdout)

    records = [{"step": 50, "train/loss": 1.0}, {"step": 100, "eval/field_f1": 0.5},
               {"step": 200, "eval/field_f1": 1.0}, {"step": 300, "eval/field_f1": 0.87501},
               {"step": 400, "eval/field_f1": 1.0}, {"step": 500, "eval/field_f1": 1.0}]
    out = curve(records)
    assert out["field_f1"] == 1.0 and out["num_samples"] == 8
    assert out["field_f1_curve"] == [[100, 0.5], [200, 1.0], [300, 0.875], [400, 1.0], [500, 1.0]]
    assert out["steps_to_field_f1"] == 200 and out["steps_to_field_f1_held"] == 400
    records[-1]["eval/field_f1"] = 0.9
    assert curve(records)["steps_to_field_f1_held"] is None


def test_reading_probe_reports_image_gap_and_cer_on_held_out_lines():
    """The one-process probe of docs/reading.md: a JSON line per evaluation, scored on held-out
    lines (pix2struct with CTC: its patch columns as the line)."""
    proc = subprocess.run(
        [sys.executable, f"{REPO}/benchmarks/reading_probe.py", "pix2struct_reader_tiny", "--steps", "4",
         "--every", "2", "--batch_size", "4", "--warmup", "1", "--ctc", "1"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and records[-1]["samples"] == 16
    for r in records:
        assert r["cer"] >= 0 and r["heldout_loss"] > 0 and r["image_gap"] == r["image_gap"]  # never NaN
        assert len(r["example"]) == 2 and r["example"][1]  # (prediction, truth)
