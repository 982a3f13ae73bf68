"""The eval app's command line, checkpoint resolution and output names (no training)."""
import json
import os

import pytest

from pixparse.app.eval import _check, checkpoint_name, dataset_name, run_eval
from pixparse.cli import parse
from pixparse.config import EvalConfig
from pixparse.models.export import resolve_checkpoint_path


@pytest.fixture(scope="module")
def reader_export(tmp_path_factory) -> str:
    """An export of an untrained cruller_tiny reader (read_pretrain), shared by the tests that only
    read it; its folder is named 'exp' (the outputs are named after it)."""
    from pixparse.models.export import save_exported
    from pixparse.tasks.config import TaskConfig
    from pixparse.tasks.registry import create_task

    task = create_task(TaskConfig(model_name="cruller_tiny"))
    path = str(tmp_path_factory.mktemp("reader") / "exp")
    save_exported(task.model, task.model_cfg, task.tokenizer, path, task.export_info())
    return path


def test_seed_eval_spellings_parse():
    """huggingface/pixparse's eval flags, dashed."""
    command, cfg = parse(["eval", "--task.name", "finetune_sroie", "--data.eval.source", "x-{0..3}.tar",
                          "--data.eval.num-samples", "40", "--data.eval.batch-size", "4",
                          "--data.eval.num-workers", "2", "--eval.checkpoint-path", "runs/x/checkpoints",
                          "--output-dir", "out", "--task.num-beams", "3"])
    assert command == "eval" and isinstance(cfg, EvalConfig)
    assert (cfg.data.eval.num_samples, cfg.data.eval.batch_size, cfg.data.eval.num_workers) == (40, 4, 2)
    assert cfg.eval.checkpoint_path == "runs/x/checkpoints" and cfg.output_dir == "out"
    assert cfg.task.name == "finetune_sroie" and cfg.task.num_beams == 3


def test_pretrain_takes_a_task_name_and_an_eval_source():
    _, cfg = parse(["pretrain", "--deepspeed_config", "d.json", "--data.train.source", "a.tar",
                    "--data.train.num_samples", "8", "--task.name", "finetune_sroie",
                    "--data.eval.source", "b.tar"])
    assert cfg.task.name == "finetune_sroie" and cfg.data.eval.source == "b.tar"
    with pytest.raises(SystemExit):
        parse(["pretrain", "--deepspeed_config", "d.json", "--data.train.source", "a.tar",
               "--data.train.num_samples", "8", "--task.name", "no_such_task"])


def test_names_of_outputs():
    assert checkpoint_name("/r/runs/exp1/checkpoints/step_00000320") == "exp1-step_00000320"
    assert checkpoint_name("/r/ckpt/exp1/step_00000320") == "exp1-step_00000320"
    assert checkpoint_name("/r/exports/demo") == "demo"
    assert dataset_name("shards/sroie-{000000..000007}.tar") == "sroie"
    assert dataset_name("/d/cord_val.tar::/d/other.tar") == "cord_val"


def test_checkpoint_folder_resolves_through_latest(tmp_path):
    (tmp_path / "step_00000008").mkdir()
    (tmp_path / "latest").write_text("step_00000008\n")
    assert resolve_checkpoint_path(str(tmp_path)) == str(tmp_path / "step_00000008")
    assert resolve_checkpoint_path(str(tmp_path / "step_00000008")) == str(tmp_path / "step_00000008")
    (tmp_path / "latest").write_text("../elsewhere")
    with pytest.raises(ValueError, match="not a plain folder name"):
        resolve_checkpoint_path(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        resolve_checkpoint_path(str(tmp_path / "nope"))


def test_task_mismatch_is_refused_before_anything_runs(reader_export, tmp_path):
    _, cfg = parse(["eval", "--task.name", "finetune_sroie", "--data.eval.source", str(tmp_path / "x.tar"),
                    "--eval.checkpoint-path", reader_export])
    with pytest.raises(ValueError, match="trained for read_pretrain; pass --task.name read_pretrain"):
        run_eval(cfg)


def test_eval_app_on_an_export(reader_export, synth_shards, tmp_path, capsys):
    """One process: an export of an untrained pretrain model, synthetic pages; files written."""
    _, cfg = parse(["eval", "--data.eval.source", synth_shards, "--data.eval.num-samples", "5",
                    "--data.eval.batch-size", "3", "--data.eval.num-workers", "0", "--task.max_new_tokens", "4",
                    "--eval.checkpoint-path", reader_export, "--output-dir", str(tmp_path / "out")])
    metrics = run_eval(cfg)
    assert metrics["num_samples"] == 5 and "image_gap" in metrics and metrics["loss"] > 0
    saved = json.loads((tmp_path / "out" / "exp-synth-metrics.json").read_text())
    assert saved["num_samples"] == 5
    lines = (tmp_path / "out" / "exp-synth-predictions.jsonl").read_text().splitlines()
    assert len(lines) == 5 and len({json.loads(x)["key"] for x in lines}) == 5
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_samples"] == 5


@pytest.mark.parametrize("fmt,folder", [("funsd", "funsd/testing_data"), ("docbank", "docbank_samples")])
def test_ocr_eval_of_a_reader_on_real_pages(reader_export, shared_data, tmp_path, fmt, folder):
    """OCR evaluation (read_pretrain: CER/WER) of a reader on FUNSD forms and DocBank pages."""
    from pixparse.app.write import write

    shards = write(fmt, f"{shared_data}/{folder}", str(tmp_path / "shards"), max_samples=3)
    _, cfg = parse(["eval", "--data.eval.source", shards[0], "--data.eval.batch-size", "3",
                    "--data.eval.num-workers", "0", "--task.max_new_tokens", "8",
                    "--eval.checkpoint-path", reader_export, "--output-dir", str(tmp_path / "out")])
    metrics = run_eval(cfg)
    assert metrics["num_samples"] == 3 and metrics["skipped"] == 0
    # an untrained reader writes at most 8 tokens of pages of hundreds of characters: CER near 1
    assert 0.9 <= metrics["cer"] <= 1.0 and metrics["wer"] >= 0.9
    refs = [json.loads(x)["reference"] for x in open(metrics["predictions"]).read().splitlines()]
    assert all(len(r) > 100 for r in refs)  # the page's real text is the reference


@pytest.mark.parametrize("kind", ["not_a_tar", "empty_tar", "zero_bytes", "unreachable_url"])
def test_eval_of_unreadable_data_is_an_error(reader_export, tmp_path, kind):
    """Finding 8: a non-tar, a 0-byte or an empty tar, an unreachable URL gave rc 0, num_samples 0,
    loss 0.0."""
    import tarfile

    shard = tmp_path / "bad-000000.tar"
    if kind == "not_a_tar":
        shard.write_bytes(b"hello, this is not a tar file" * 100)
    elif kind == "empty_tar":
        tarfile.open(shard, "w").close()
    elif kind == "zero_bytes":
        shard.write_bytes(b"")
    else:
        from pixparse.engine.dist import free_port

        shard = f"http://127.0.0.1:{free_port()}/bad-000000.tar"  # nothing listens there
    _, cfg = parse(["eval", "--data.eval.source", str(shard), "--data.eval.num-workers", "0",
                    "--eval.checkpoint-path", reader_export, "--output-dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="no readable sample in --data.eval.source"):
        run_eval(cfg)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_each_eval_keeps_its_own_predictions_file(reader_export, synth_shards, tmp_path):
    """Finding 9: predictions.jsonl was overwritten by the next eval into the same --output_dir."""
    import shutil

    other = tmp_path / "other-000000.tar"
    shutil.copy(synth_shards.replace("{000000..000003}", "000000"), other)
    paths = []
    for source in (synth_shards, str(other)):
        _, cfg = parse(["eval", "--data.eval.source", source, "--data.eval.num-samples", "2",
                        "--data.eval.num-workers", "0", "--task.max_new_tokens", "2",
                        "--eval.checkpoint-path", reader_export, "--output-dir", str(tmp_path / "out")])
        paths.append(run_eval(cfg)["predictions"])
    assert [os.path.basename(p) for p in paths] == ["exp-synth-predictions.jsonl", "exp-other-predictions.jsonl"]
    assert all(len(open(p).read().splitlines()) == 2 for p in paths)


def test_the_eval_app_takes_the_task_from_the_checkpoint(synth_shards, tmp_path):
    from pixparse.models.export import save_exported
    from pixparse.tasks.config import TaskConfig
    from pixparse.tasks.registry import create_task

    task = create_task(TaskConfig(name="parse_pretrain", model_name="cruller_tiny"))
    save_exported(task.model, task.model_cfg, task.tokenizer, str(tmp_path / "exp"), task.export_info())
    _, cfg = parse(["eval", "--data.eval.source", synth_shards, "--eval.checkpoint-path", str(tmp_path / "exp")])
    assert cfg.task.name == "parse_pretrain"
    _, cfg = parse(["eval", "--data.eval.source", synth_shards, "--eval.checkpoint-path", str(tmp_path / "exp"),
                    "--task.name", "read_pretrain"])
    assert cfg.task.name == "read_pretrain"  # given: kept (and refused by the app as a mismatch)
    with pytest.raises(ValueError, match="was trained for parse_pretrain; pass --task.name parse_pretrain"):
        _check(cfg)


def test_a_checkpoint_of_the_old_task_names_is_evaluated_under_the_new(synth_shards, tmp_path):
    """Exports and checkpoints written before the rename record huggingface/pixparse's names."""
    from pixparse.models.export import save_exported
    from pixparse.tasks.config import TaskConfig
    from pixparse.tasks.registry import create_task

    task = create_task(TaskConfig(name="read_pretrain", model_name="cruller_tiny"))
    save_exported(task.model, task.model_cfg, task.tokenizer, str(tmp_path / "exp"),
                  {**task.export_info(), "task": "cruller_pretrain"})
    for given in ([], ["--task.name", "read_pretrain"], ["--task.name", "cruller_pretrain"]):
        _, cfg = parse(["eval", "--data.eval.source", synth_shards, "--eval.checkpoint-path", str(tmp_path / "exp"),
                        *given])
        assert cfg.task.name == "read_pretrain" and _check(cfg)
