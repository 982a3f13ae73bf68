"""Checkpoints on S3 for the eval app, against a real S3-compatible HTTP server (moto's) started
here; boto3 talks to it through AWS_ENDPOINT_URL, as it would to MinIO or AWS."""
import json
import os

import pytest

from pixparse.app.eval import run_eval
from pixparse.cli import parse

moto_server = pytest.importorskip("moto.server", reason="moto[server] absent: pip install -e '.[test]'")
boto3 = pytest.importorskip("boto3")


@pytest.fixture
def s3(monkeypatch):
    from pixparse.engine.dist import free_port

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
                 "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3")
    client.create_bucket(Bucket="pixparse-exps")
    yield client
    server.stop()


def _upload(client, folder, prefix):
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            client.upload_file(path, "pixparse-exps", f"{prefix}/{os.path.relpath(path, folder)}")


def test_eval_app_reads_a_checkpoint_from_s3_with_the_seed_flags(s3, synth_shards, tmp_path, capsys):
    """huggingface/pixparse's eval command: --s3-bucket + a key, --model-name, --task.dtype."""
    from pixparse.models.export import save_exported
    from pixparse.tasks.config import TaskConfig
    from pixparse.tasks.registry import create_task

    preset = tmp_path / "cruller_large_6layers.json"  # a user's own preset, named as in the seed README
    preset.write_text(open(os.path.join(os.path.dirname(__file__), "..", "pixparse", "models", "presets",
                                        "cruller_tiny.json")).read())
    task = create_task(TaskConfig(model_name=str(preset)))
    save_exported(task.model, task.model_cfg, task.tokenizer, str(tmp_path / "exp"), task.export_info())
    _upload(s3, tmp_path / "exp", "20230629-231529-model_cruller_large/export")
    cache = tmp_path / "cache"
    args = ["eval", "--data.eval.source", synth_shards, "--data.eval.num-samples", "4",
            "--data.eval.batch-size", "2", "--data.eval.num-workers", "1", "--model-name", "cruller_large_6layers",
            "--task.dtype", "bfloat16", "--task.max_new_tokens", "3", "--s3-bucket", "pixparse-exps",
            "--eval.checkpoint-path", "20230629-231529-model_cruller_large/export", "--eval.cache-dir", str(cache),
            "--output-dir", str(tmp_path / "out")]
    metrics = run_eval(parse(args)[1])
    assert metrics["num_samples"] == 4 and metrics["dtype"] == "bfloat16"
    local = cache / "pixparse-exps" / "20230629-231529-model_cruller_large" / "export"
    assert metrics["checkpoint"] == str(local) and (local / "model.safetensors").is_file()
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_samples"] == 4
    # a different preset is refused before anything runs
    with pytest.raises(ValueError, match="--model-name cruller_base: .* is a cruller_large_6layers model"):
        run_eval(parse([a if a != "cruller_large_6layers" else "cruller_base" for a in args])[1])


def test_fetch_takes_the_latest_tag_only_and_caches(s3, tmp_path):
    from pixparse.app.s3 import fetch_checkpoint

    ckpt = tmp_path / "checkpoints"
    for tag in ("step_00000008", "step_00000016"):
        (ckpt / tag / "assets").mkdir(parents=True)
        (ckpt / tag / "mp_rank_00_model_states.pt").write_bytes(b"x" * 100)
        (ckpt / tag / "assets" / "model_config.json").write_text("{}")
    (ckpt / "latest").write_text("step_00000016\n")
    _upload(s3, ckpt, "runs/x/checkpoints")
    local = fetch_checkpoint("s3://pixparse-exps/runs/x/checkpoints/", str(tmp_path / "cache"))
    assert sorted(os.listdir(local)) == ["latest", "step_00000016"]
    assert (tmp_path / "cache" / "pixparse-exps" / "runs/x/checkpoints/step_00000016/assets/model_config.json").is_file()
    states = os.path.join(local, "step_00000016", "mp_rank_00_model_states.pt")
    os.utime(states, (1, 1))
    assert fetch_checkpoint("s3://pixparse-exps/runs/x/checkpoints", str(tmp_path / "cache")) == local
    assert os.path.getmtime(states) == 1  # complete cached files are not fetched again
    with open(states, "wb") as f:  # a cut one is
        f.write(b"x" * 10)
    fetch_checkpoint("s3://pixparse-exps/runs/x/checkpoints", str(tmp_path / "cache"))
    assert os.path.getsize(states) == 100
    with pytest.raises(ValueError, match="s3://pixparse-exps/runs/nothing: no objects under"):
        fetch_checkpoint("s3://pixparse-exps/runs/nothing", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="NoSuchBucket|does not exist"):
        fetch_checkpoint("s3://no-such-bucket/x", str(tmp_path / "cache"))


@pytest.mark.parametrize("bad", ["object", "latest"])
def test_keys_that_would_leave_the_cache_are_refused_before_writing(s3, tmp_path, bad):
    """Finding 7: a bucket object 'exp/../../../../x' (or a `latest` naming '../..') was written
    outside --eval.cache_dir before any check."""
    from pixparse.app.s3 import fetch_checkpoint

    cache = tmp_path / "deep" / "cache"
    if bad == "object":
        s3.put_object(Bucket="pixparse-exps", Key="exp/step_00000001/assets/model_config.json", Body=b"{}")
        s3.put_object(Bucket="pixparse-exps", Key="exp/step_00000001/../../../../../escaped", Body=b"x")
        s3.put_object(Bucket="pixparse-exps", Key="exp/latest", Body=b"step_00000001")
    else:
        s3.put_object(Bucket="pixparse-exps", Key="exp/latest", Body=b"../../../../escaped")
    with pytest.raises(ValueError, match="not a plain folder name"):
        fetch_checkpoint("s3://pixparse-exps/exp", str(cache))
    assert not [p for p in tmp_path.rglob("escaped*")]
