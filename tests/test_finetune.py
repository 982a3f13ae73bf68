"""Fine-tuning and evaluation with the real engine and launchers on 2 CPU ranks, on real receipts."""
import json
import os
import sys

import pytest

from tests.conftest import REPO
from tests.test_distributed import _metrics, _run, two_ranks

pytestmark = pytest.mark.slow


@pytest.mark.long
def test_learning_check_reads_the_receipts(shared_data, tmp_path):
    """8 SROIE receipts: fine-tune on 2 ranks, then the eval app parses every field of every
    receipt, and the loss depends on the page (a model that ignores its input fails here). The
    other families are checked on other tasks below (each family and each task learns once).
    EVALS=4: the receipts are scored after each quarter, and the curve ends reading them all."""
    proc = _run(["bash", f"{REPO}/benchmarks/learning_check.sh", f"{shared_data}/sroie", str(tmp_path),
                 "cruller_tiny"], timeout=900, env={"EVALS": "4"})
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [step for step, _ in metrics["field_f1_curve"]] == [300, 600, 900, 1200], metrics
    assert metrics["field_f1_curve"][-1][1] == 1.0 and metrics["steps_to_field_f1_held"] is not None
    assert metrics["num_samples"] == 8
    assert metrics["field_f1"] == 1.0 and metrics["ted_accuracy"] == 1.0, metrics
    assert metrics["image_gap"] > 0.05, metrics
    predictions = [json.loads(x) for x in open(metrics["predictions"]).read().splitlines()]
    assert all(p["prediction"] == p["reference"] for p in predictions)


def test_zero3_finetune_evaluates_in_lockstep_and_eval_app_gathers_ranks(shared_data, tmp_path):
    """ZeRO-3 on 2 ranks with eval during training on 3 shards (one rank has more batches: the
    collective forwards must stay matched, or this hangs), then the eval app on the sharded
    checkpoint with 1 process and with 2 ranks: the same samples, once each, the same metrics."""
    from pixparse.app.write import write

    write("sroie", f"{shared_data}/sroie", str(tmp_path / "shards"), samples_per_shard=1, max_samples=4)
    train_src = str(tmp_path / "shards" / "sroie-{000000..000003}.tar")
    eval_src = str(tmp_path / "shards" / "sroie-{000000..000002}.tar")
    cmd = two_ranks(
        "--deepspeed_config", f"{REPO}/ds_configs/zero3_fp32.json", "--task.name", "finetune_sroie",
        "--task.model_name", "cruller_tiny", "--task.max_length", "256", "--task.max_new_tokens", "6",
        "--data.train.source", train_src, "--data.train.batch_size", "2", "--data.train.num_samples", "16",
        "--data.train.num_workers", "1", "--data.eval.source", eval_src, "--data.eval.batch_size", "1",
        "--data.eval.num_workers", "0", "--task.num_intervals", "1", "--train.output_dir", str(tmp_path),
        "--train.experiment", "z3", "--train.log_every_n_steps", "1")
    _run(cmd, timeout=300)
    evals = [r for r in _metrics(tmp_path, "z3") if "eval/image_gap" in r]
    assert len(evals) == 1 and evals[0]["eval/num_samples"] == 3 and "eval/field_f1" in evals[0]

    ckpt = str(tmp_path / "z3" / "checkpoints")  # the folder: resolved through `latest`
    args = ["--task.name", "finetune_sroie", "--data.eval.source", eval_src, "--data.eval.batch-size", "2",
            "--data.eval.num-workers", "0", "--task.max_new_tokens", "6", "--eval.checkpoint-path", ckpt]
    one = _run([sys.executable, "-m", "pixparse.app.eval", *args, "--output-dir", str(tmp_path / "e1")])
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "pixparse.app.eval", *args, "--output-dir", str(tmp_path / "e2")])
    m1 = json.loads(one.stdout.strip().splitlines()[-1])
    m2 = json.loads(two.stdout.strip().splitlines()[-1])
    assert m2["world_size"] == 2 and m1["num_samples"] == m2["num_samples"] == 3
    for k in ("loss", "field_f1", "ted_accuracy"):
        assert m1[k] == pytest.approx(m2[k], rel=1e-4, abs=1e-6), k
    keys = [json.loads(x)["key"] for x in (tmp_path / "e2" / "z3-step_00000004-sroie-predictions.jsonl").read_text().splitlines()]
    assert sorted(keys) == ["000", "001", "002"]
    assert os.path.isfile(tmp_path / "e2" / "z3-step_00000004-sroie-metrics.json")


def test_docvqa_zero3_eval_with_uneven_prompt_lengths_does_not_hang(synth_shards, tmp_path):
    """DocVQA questions of different lengths: one rank has two prompt lengths (two generate
    calls per batch), the other one. Under ZeRO-3 every call is collective, so the ranks must
    match their calls (dummy ones) or this hangs until the timeout."""
    import webdataset as wds

    from pixparse.data.loader import expand_source
    from pixparse.data.write import write_shards

    def with_qa(i, sample, questions):
        anno = json.loads(sample["json"])
        first = anno["pages"][0]["lines"]["text"][0]
        anno["qa"] = [{"question": q, "answers": [first]} for q in questions]
        return {**sample, "__key__": f"q{i}", "json": json.dumps(anno).encode()}

    raw = [s for s in wds.tarfile_samples([{"url": u} for u in expand_source(synth_shards)])][:8]
    raw = [{k: v for k, v in s.items() if not k.startswith("__")} for s in raw]
    shards = []
    for n, questions in enumerate((["First line?", "What does the first line say?"], ["First line?"])):
        samples = [with_qa(i, s, questions) for i, s in enumerate(raw[n * 4:(n + 1) * 4])]
        shards += write_shards(iter(samples), str(tmp_path / f"qa{n}-%06d.tar"), 4)
    source = str(tmp_path / "qa{0..1}-000000.tar")
    cmd = two_ranks(
        "--deepspeed_config", f"{REPO}/ds_configs/zero3_fp32.json", "--task.name", "finetune_docvqa",
        "--task.model_name", "cruller_tiny", "--task.max_new_tokens", "4",
        "--data.train.source", source, "--data.train.batch_size", "2", "--data.train.num_samples", "8",
        "--data.train.num_workers", "1", "--data.eval.source", source, "--data.eval.batch_size", "4",
        "--data.eval.num_workers", "0", "--task.num_intervals", "1", "--train.output_dir", str(tmp_path),
        "--train.experiment", "qa", "--train.log_every_n_steps", "1")
    _run(cmd, timeout=240)
    evals = [r for r in _metrics(tmp_path, "qa") if "eval/anls" in r]
    assert len(evals) == 1 and evals[0]["eval/num_samples"] == 12  # 4 x 2 questions + 4 x 1


def _learning_check_all(shared_data, out, zero, preset, *tasks):
    proc = _run(["bash", f"{REPO}/benchmarks/learning_check_all.sh", shared_data, str(out), *tasks],
                env={"ZERO": str(zero), "PRESET": preset}, timeout=900)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.long
def test_pix2struct_learns_cord_fields_zero2(shared_data, tmp_path):
    """Pix2Struct (packed variable-resolution patches) on CORD-layout receipts (nested groups, a
    list): every field of every receipt right, from the page."""
    m = _learning_check_all(shared_data, tmp_path, 2, "pix2struct_tiny", "cord")
    assert m["cord_field_f1"] == 1.0 and m["cord_image_gap"] > 0.05, m
    cord = json.loads((tmp_path / "cord" / "metrics.json").read_text())
    assert cord["ted_accuracy"] == 1.0 and cord["num_samples"] == 8


@pytest.mark.long
def test_pali_answers_funsd_questions_zero2(shared_data, tmp_path):
    """PaLI (the question read by its text encoder) on FUNSD questions (each question asked of 4
    forms, each form asked 2 questions): every answer right, and the loss depends on the page."""
    m = _learning_check_all(shared_data, tmp_path, 2, "pali_tiny", "docvqa")
    assert m["docvqa_anls"] == 1.0 and m["docvqa_image_gap"] > 0.05, m


@pytest.mark.parametrize("task", ["xent", pytest.param("rvlcdip", marks=pytest.mark.long)])
def test_learning_checks_classification_zero3(shared_data, tmp_path, task):
    """The RVL-CDIP pages, with the linear head (xent) and as a generated class token, ZeRO-3: the
    shortest learning check (xent: 100 steps) is the suite's proof that fine-tuning learns from the
    page; the receipt, CORD, DocVQA and class-token checks run with `launch/test.sh --full`."""
    m = _learning_check_all(shared_data, tmp_path, 3, "cruller_tiny", task)
    assert m[f"{task}_accuracy"] == 1.0 and m[f"{task}_image_gap"] > 0.05, m
