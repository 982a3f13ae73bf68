import json
import re
import subprocess
import sys

import pytest
import yaml

from pixparse.cli import normalize_argv, parse
from pixparse.config import PretrainConfig
from pixparse.engine.ds_config import resolve_ds_config
from tests.conftest import REPO

BASE = ["pretrain", "--deepspeed_config", "ds_configs/zero2_bf16.json",
        "--data.train.source", "x-{000..003}.tar", "--data.train.num_samples", "64"]


def test_flags_reach_the_config():
    _, cfg = parse(BASE + ["--data.train.batch_size", "2", "--task.model_name", "cruller_tiny",
                           "--task.opt.learning_rate", "1e-4", "--train.tensorboard", "true"])
    assert isinstance(cfg, PretrainConfig)
    assert cfg.data.train.batch_size == 2 and cfg.task.model_name == "cruller_tiny"
    assert cfg.task.opt.learning_rate == 1e-4 and cfg.train.tensorboard is True


def test_seed_readme_spellings():
    """huggingface/pixparse wrote --data.train.batch-size and --task.opt.betas 0.9 0.98."""
    _, cfg = parse(BASE + ["--data.train.batch-size", "3", "--task.opt.betas", "0.8", "0.95",
                           "--task.num-warmup-intervals", "1", "--local_rank=1"])
    assert cfg.data.train.batch_size == 3
    assert tuple(cfg.task.opt.betas) == (0.8, 0.95)
    assert cfg.task.num_warmup_intervals == 1 and cfg.local_rank == 1


def test_normalize_argv_leaves_values_alone():
    argv = normalize_argv(["--data.train.source", "pipe:aws s3 cp s3://b/x-{0..9}.tar -"], PretrainConfig)
    assert argv[1] == "pipe:aws s3 cp s3://b/x-{0..9}.tar -"


def test_yaml_config_then_flags_take_precedence(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": {"batch_size": 5}}, "task": {"num_intervals": 7}}))
    _, cfg = parse(BASE[:1] + ["--config", str(path)] + BASE[1:] + ["--task.num_intervals", "9"])
    assert cfg.data.train.batch_size == 5 and cfg.task.num_intervals == 9


@pytest.mark.parametrize("flag,value,message", [
    ("--data.train.batch_size", "0", "--data.train.batch_size must be > 0"),
    ("--task.num_warmup_intervals", "50", "--task.num_warmup_intervals must be in"),
    ("--task.opt.grad_accum_steps", "0", "--task.opt.grad_accum_steps must be > 0"),
])
def test_bad_values_name_the_flag(flag, value, message):
    with pytest.raises(ValueError, match=message):
        parse(BASE + [flag, value])


def test_missing_required_flag_fails():
    with pytest.raises(SystemExit):
        parse(["pretrain", "--deepspeed_config", "x.json"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixparse.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_help_lists_subcommands_and_print_config_dumps_yaml():
    out = _cli("--help")
    assert out.returncode == 0 and all(c in out.stdout for c in ("pretrain", "bench", "eval", "export", "write",
                                                                 "synth", "tokenizer"))
    assert "--render" in _cli("synth", "--help").stdout and "--crop_lines" in _cli("write", "--help").stdout
    out = _cli(*BASE, "--print_config")
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["data"]["train"]["source"] == "x-{000..003}.tar"


def test_cli_error_is_one_clear_line():
    out = _cli(*BASE, "--data.train.batch_size", "-1")
    assert out.returncode != 0
    assert "pixparse: error: --data.train.batch_size must be > 0" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("entry", ["from pixparse.cli import main; main(['--help'])",
                                   "from pixparse.app.write import main; main(['--help'])"])
def test_entry_points_freeze_the_heap_at_exit(entry):
    """Every entry (the CLI, the tools) freezes the heap when the process exits, after the other
    exit handlers, so Python's exit-time collections skip it (1.5-2.5 s per process here); a
    handler registered before the entry runs after the freeze and sees the frozen objects."""
    code = ("import atexit, gc, sys\n"
            "atexit.register(lambda: sys.stderr.write(f'frozen {gc.get_freeze_count()}'))\n" + entry)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    frozen = int(re.search(r"frozen (\d+)", out.stderr).group(1))
    assert frozen > 10_000, out.stderr[-500:]


def _write(tmp_path, d):
    p = tmp_path / "ds.json"
    p.write_text(json.dumps(d))
    return str(p)


def test_ds_config_auto_values_are_filled(tmp_path):
    ds = resolve_ds_config(f"{REPO}/ds_configs/zero3_bf16.json", 2, 4, 2, None)
    assert ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 16
    assert ds["gradient_clipping"] == 1.0


def test_ds_config_conflict_names_both_places(tmp_path):
    path = _write(tmp_path, {"train_micro_batch_size_per_gpu": 4})
    with pytest.raises(ValueError, match=r"--data.train.batch_size=2 disagrees with train_micro_batch_size_per_gpu=4 in .*ds.json"):
        resolve_ds_config(path, 2, 1, 1, None)
    path = _write(tmp_path, {"gradient_clipping": 1.0})
    with pytest.raises(ValueError, match="--task.opt.clip_grad_value=0.5 disagrees with gradient_clipping=1.0"):
        resolve_ds_config(path, 2, 1, 1, 0.5)
    assert resolve_ds_config(_write(tmp_path, {"gradient_clipping": "auto"}), 2, 1, 1, 0.5)["gradient_clipping"] == 0.5


def test_ds_config_rejects_what_pixparse_owns(tmp_path):
    path = _write(tmp_path, {"optimizer": {"type": "AdamW"}})
    with pytest.raises(ValueError, match="--task.opt"):
        resolve_ds_config(path, 2, 1, 1, None)
    with pytest.raises(ValueError, match="does not exist"):
        resolve_ds_config(str(tmp_path / "nope.json"), 2, 1, 1, None)


def test_shipped_ds_configs_resolve():
    for name in ("zero2_bf16", "zero3_bf16", "zero2_fp32"):
        ds = resolve_ds_config(f"{REPO}/ds_configs/{name}.json", 2, 1, 2, None)
        assert ds["train_batch_size"] == 4


@pytest.mark.parametrize("recipe", sorted(__import__("glob").glob(f"{REPO}/launch/recipes/*.yaml")))
def test_every_recipe_parses(recipe):
    _, cfg = parse(["pretrain", "--deepspeed_config", "ds_configs/zero2_bf16.json", "--config", recipe])
    assert cfg.data.train.num_samples > 0 and cfg.task.num_intervals > 0
    from pixparse.models import get_model_config

    get_model_config(cfg.task.model_name)


def test_bench_subcommand_parses_and_checks_its_window():
    from pixparse.config import BenchConfig

    _, cfg = parse(["bench"] + BASE[1:] + ["--synthetic_data", "true", "--steps", "25"])
    assert isinstance(cfg, BenchConfig) and cfg.synthetic_data and cfg.steps == 25
    with pytest.raises(ValueError, match="--steps must be >= 20"):
        parse(["bench"] + BASE[1:] + ["--steps", "5"])


def test_resume_with_nothing_to_resume_fails_before_the_process_group(synth_shards, tmp_path):
    import torch.distributed as dist

    from pixparse.cli import main

    argv = ["pretrain", "--deepspeed_config", f"{REPO}/ds_configs/zero2_fp32.json", "--data.train.source",
            synth_shards, "--data.train.num_samples", "8", "--data.train.num_workers", "1",
            "--task.model_name", "cruller_tiny", "--train.output_dir", str(tmp_path)]
    with pytest.raises(SystemExit, match=r"pixparse pretrain: error: --train.resume latest: no .*latest"):
        main(argv + ["--train.experiment", "nothing", "--train.resume", "latest"])
    with pytest.raises(SystemExit, match="--train.resume latest needs --train.experiment"):
        main(argv + ["--train.resume", "latest"])
    assert not dist.is_initialized()


def test_the_resume_and_the_final_deepspeed_dict_are_settled_before_the_process_group(synth_shards, tmp_path):
    """--train.resume auto is 'latest' only where a complete tag exists; a ZeRO tag saved on another
    number of ranks turns DeepSpeed's universal loading on in the dict the engine is given, a
    stage-0 tag loads as it is; a tag resumed under the other kind of stage is refused."""
    import torch
    import torch.distributed as dist

    from pixparse.app.run import _check_resume, _final_ds_config
    from pixparse.engine import checkpoint

    def cfg(*flags):
        return parse(["pretrain", "--deepspeed_config", f"{REPO}/ds_configs/zero2_fp32.json", "--data.train.source",
                      synth_shards, "--data.train.num_samples", "8", "--train.output_dir", str(tmp_path),
                      "--train.experiment", "run", *flags])[1]

    auto = cfg("--train.resume", "auto")
    assert _check_resume(auto) is None  # no checkpoint yet: a fresh start
    ckpt = tmp_path / "run" / "checkpoints"
    partial = ckpt / (checkpoint.tag_for_step(8) + checkpoint.PARTIAL)
    partial.mkdir(parents=True)  # a save a kill interrupted is no checkpoint
    assert _check_resume(auto) is None
    tag = ckpt / checkpoint.tag_for_step(4)
    tag.mkdir()
    (tag / checkpoint.MARKER).write_text(json.dumps({"step": 4, "world_size": 2}))
    torch.save({}, tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")  # a ZeRO tag: optimizer shards
    (ckpt / checkpoint.LATEST).write_text(tag.name)
    for resume in (_check_resume(auto), _check_resume(cfg("--train.resume", "latest")),
                   _check_resume(cfg("--train.resume", str(tag)))):
        assert resume == (str(ckpt), tag.name)
    ds, _ = _final_ds_config(auto, 2, (str(ckpt), tag.name))
    assert "load_universal" not in ds.get("checkpoint", {})  # saved on 2 ranks, resumed on 2
    ds, changed = _final_ds_config(auto, 1, (str(ckpt), tag.name))
    assert ds["checkpoint"]["load_universal"] is True and changed == ["overlap_comm", "contiguous_gradients"]
    stage0 = cfg("--train.resume", "auto", "--deepspeed_config", f"{REPO}/ds_configs/zero0_fp32.json")
    with pytest.raises(ValueError, match="written with ZeRO .* this run has ZeRO stage 0"):
        _final_ds_config(stage0, 2, (str(ckpt), tag.name))
    (tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()  # now a stage-0 tag
    ds, _ = _final_ds_config(stage0, 1, (str(ckpt), tag.name))
    assert "load_universal" not in ds.get("checkpoint", {})
    assert not dist.is_initialized()


def test_task_dtype_fills_or_must_agree_with_the_ds_json(tmp_path, monkeypatch):
    from pixparse.engine import ds_config as dsc

    bf16 = f"{REPO}/ds_configs/zero2_bf16.json"
    assert resolve_ds_config(bf16, 2, 1, 1, None, "bfloat16")["bf16"]["enabled"] is True
    with pytest.raises(ValueError, match=r"--task.dtype float32 \(float32\) disagrees with .*zero2_bf16.json, "
                                         r"which enables bfloat16"):
        resolve_ds_config(bf16, 2, 1, 1, None, "float32")
    with pytest.raises(ValueError, match="disagrees with .*zero2_fp32.json, which enables float32"):
        resolve_ds_config(f"{REPO}/ds_configs/zero2_fp32.json", 2, 1, 1, None, "bfloat16")
    # a JSON that states no precision (or "auto") takes the flag's
    ds = resolve_ds_config(_write(tmp_path, {"bf16": {"enabled": "auto"}}), 2, 1, 1, None, "float16")
    assert ds["fp16"]["enabled"] is True and ds["bf16"]["enabled"] is False
    with pytest.raises(ValueError, match="leaves its precision \"auto\": set --task.dtype"):
        resolve_ds_config(_write(tmp_path, {"bf16": {"enabled": "auto"}}), 2, 1, 1, None)
    # no --deepspeed_config: the built-in ZeRO-2 config with the flag's precision
    ds = resolve_ds_config(None, 2, 1, 1, None, "bfloat16")
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] is True and ds["train_batch_size"] == 2
    assert resolve_ds_config(None, 2, 1, 1, None)["zero_optimization"]["stage"] == 2  # fp32 when nothing says
    # auto: bf16 only where it is computed natively
    monkeypatch.setattr(dsc, "native_bf16", lambda: (False, "no AMX"))
    assert dsc.resolve_dtype("auto") == ("float32", "--task.dtype auto: no AMX")
    assert resolve_ds_config(None, 2, 1, 1, None, "auto")["bf16"]["enabled"] is False
    monkeypatch.setattr(dsc, "native_bf16", lambda: (True, "AMX"))
    assert resolve_ds_config(None, 2, 1, 1, None, "auto")["bf16"]["enabled"] is True


def test_native_bf16_reads_the_cpu_flags():
    from pixparse.engine.ds_config import native_bf16

    ok, why = native_bf16()
    flags = open("/proc/cpuinfo").read()
    assert ok == (" amx_bf16" in flags or " avx512_bf16" in flags), why


def _bad_config_cases(tmp_path, synth_shards):
    preset = json.loads(open(f"{REPO}/pixparse/models/presets/cruller_tiny.json").read())
    preset["image_encoder"]["image_size"] = [130, 96]
    (tmp_path / "odd.json").write_text(json.dumps(preset))
    (tmp_path / "notjson.json").write_text("{'stage': 2,")
    ds_b4 = _write(tmp_path, {"train_micro_batch_size_per_gpu": 4})
    laughs = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    (tmp_path / "bomb.yaml").write_text("\n".join(laughs) + "\n")
    (tmp_path / "latin1.yaml").write_bytes("train:\n  experiment: caf\xe9\n".encode("latin-1"))
    (tmp_path / "bad.model").write_bytes(b"not a sentencepiece model")
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": 12}')
    return {
        "yaml alias bomb": (["--config", str(tmp_path / "bomb.yaml")], r"--config .*bomb.yaml: \d+ values once its aliases"),
        "config not utf-8": (["--config", str(tmp_path / "latin1.yaml")], r"--config .*latin1.yaml: not UTF-8"),
        "bad sentencepiece": (["--task.tokenizer", str(tmp_path / "bad.model")],
                              r"--task.tokenizer: .*bad.model is not a readable SentencePiece model"),
        "bad tokenizer.json": (["--task.tokenizer", str(tmp_path / "tokenizer.json")],
                               r"--task.tokenizer: .*tokenizer.json is not a readable tokenizer.json"),
        "glob experiment": (["--train.experiment", "br[1]"], r"--train.experiment 'br\[1\]' contains a glob"),
        "unknown preset": (["--task.model_name", "cruller_huge"], r"unknown preset 'cruller_huge'; choose one of"),
        "unknown task": (["--task.name", "finetune_nope"], r"task.name"),
        "image size vs patch": (["--task.model_name", str(tmp_path / "odd.json")],
                                r"image_size \[130, 96\] is not a multiple of .* patch size \[16, 16\]"),
        "batch vs ds json": (["--deepspeed_config", ds_b4],
                             r"--data.train.batch_size=2 disagrees with train_micro_batch_size_per_gpu=4"),
        "ds json not json": (["--deepspeed_config", str(tmp_path / "notjson.json")], r"is not valid JSON"),
        "ds json missing": (["--deepspeed_config", str(tmp_path / "nope.json")], r"does not exist"),
        "missing shard": (["--data.train.source", str(tmp_path / "gone-{000..003}.tar")], r"gone-000.tar"),
        "failing pipe": (["--data.train.source", "pipe:cat /nonexistent/shard-{0..3}.tar"],
                         r"pipe:cat /nonexistent/shard-0.tar gave 0 bytes and exit status 1: cat: .*No such file"),
        "pipe not a tar": (["--data.train.source", "pipe:yes notatar | head -c 2000"],
                           r"does not start with a tar header"),
        "samples below a batch": (["--data.train.num_samples", "1"], r"smaller than one global batch"),
        "resume nothing": (["--train.experiment", "nothing", "--train.resume", "latest"], r"--train.resume latest: no"),
        "dtype clash": (["--task.dtype", "bfloat16"], r"--task.dtype bfloat16 \(bfloat16\) disagrees with"),
        "task vs family": (["--task.name", "span_pretrain"], r"--task.name span_pretrain trains pali presets, not"),
        "patch budget vs family": (["--data.train.min_patches", "64"], r"--data.train.min_patches applies to pix2struct"),
    }


@pytest.mark.parametrize("case", ["unknown preset", "unknown task", "image size vs patch", "batch vs ds json",
                                  "ds json not json", "ds json missing", "missing shard", "failing pipe", "pipe not a tar",
                                  "samples below a batch", "resume nothing", "dtype clash", "yaml alias bomb",
                                  "config not utf-8", "bad sentencepiece", "bad tokenizer.json", "glob experiment"])
def test_every_bad_config_is_one_line_before_any_process_group(case, synth_shards, tmp_path, capsys):
    import torch.distributed as dist

    from pixparse.cli import main

    extra, message = _bad_config_cases(tmp_path, synth_shards)[case]
    argv = ["pretrain", "--deepspeed_config", f"{REPO}/ds_configs/zero2_fp32.json", "--data.train.source",
            synth_shards, "--data.train.num_samples", "8", "--data.train.batch_size", "2",
            "--data.train.num_workers", "1", "--task.model_name", "cruller_tiny", "--train.output_dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        main(argv + extra)
    text = str(exc.value.code) + capsys.readouterr().err
    assert re.search(message, text), text
    assert "Traceback" not in text
    assert not dist.is_initialized()


def test_fp16_where_the_device_lacks_it_fails_before_the_process_group(synth_shards, tmp_path, monkeypatch):
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator

    from pixparse.cli import main

    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: False)
    with pytest.raises(SystemExit, match=r"enables fp16, which the .* accelerator does not support"):
        main(["pretrain", "--deepspeed_config", f"{REPO}/ds_configs/zero2_fp16.json", "--data.train.source",
              synth_shards, "--data.train.num_samples", "8", "--task.model_name", "cruller_tiny",
              "--train.output_dir", str(tmp_path)])
    assert not dist.is_initialized()


def test_one_rank_zero_drops_the_exchange_machinery():
    from pixparse.engine.ds_config import single_rank_zero

    ds = resolve_ds_config(f"{REPO}/ds_configs/zero2_bf16.json", 2, 1, 1, None)
    assert single_rank_zero(ds, 1) == ["overlap_comm", "contiguous_gradients"]
    assert ds["zero_optimization"]["overlap_comm"] is False and ds["zero_optimization"]["contiguous_gradients"] is False
    two = resolve_ds_config(f"{REPO}/ds_configs/zero2_bf16.json", 2, 1, 2, None)
    assert single_rank_zero(two, 2) == [] and two["zero_optimization"]["overlap_comm"] is True
    # ZeRO-3: every parameter persistent on one rank (its partition is the whole parameter)
    three = resolve_ds_config(f"{REPO}/ds_configs/zero3_bf16.json", 2, 1, 1, None)
    keys = ["stage3_param_persistence_threshold", "stage3_model_persistence_threshold"]
    assert single_rank_zero(three, 1) == keys + ["overlap_comm", "contiguous_gradients"]
    assert all(three["zero_optimization"][k] >= 2**62 for k in keys)
    assert not three["zero_optimization"]["overlap_comm"] and not three["zero_optimization"]["contiguous_gradients"]
    three_two = resolve_ds_config(f"{REPO}/ds_configs/zero3_bf16.json", 2, 1, 2, None)
    assert single_rank_zero(three_two, 2) == [] and three_two["zero_optimization"]["stage3_param_persistence_threshold"] == 1e5
    offload = resolve_ds_config(f"{REPO}/ds_configs/zero3_offload_bf16.json", 2, 1, 1, None)
    assert single_rank_zero(offload, 1) == []  # offloaded parameters stay offloaded


def test_a_launcher_variable_that_is_not_a_number_is_named(monkeypatch):
    """Finding 12: WORLD_SIZE=abc gave one line that did not name the variable."""
    from pixparse.engine.dist import world_info

    monkeypatch.setenv("WORLD_SIZE", "abc")
    with pytest.raises(ValueError, match="WORLD_SIZE='abc' is not an integer"):
        world_info()


def test_a_deepspeed_outside_the_tested_range_is_one_line_before_anything(monkeypatch):
    import importlib.metadata

    from pixparse.engine.dist import check_deepspeed_version

    assert check_deepspeed_version().startswith("0.19.")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.21.0")
    with pytest.raises(ValueError, match=r"DeepSpeed 0.21.0 is installed; .* tested on 0.19.x.*deepspeed>=0.19,<0.20"):
        check_deepspeed_version()


def test_huggingface_pixparse_train_and_eval_spellings(synth_shards):
    """--task-name, --model-name, --resume True, --train.checkpoint-path, --eval.task-name and
    space-separated --data.train.source_weights were refused."""
    base = ["pretrain", "--data.train.source", f"{synth_shards}::{synth_shards}", "--data.train.num-samples", "8",
            "--data.train.resampled", "true"]
    _, cfg = parse(base + ["--task-name", "cruller_pretrain", "--model-name", "cruller_tiny", "--resume", "True",
                           "--train.experiment", "x", "--data.train.source_weights", "0.8", "0.2"])
    assert (cfg.task.name, cfg.task.model_name, cfg.train.resume) == ("read_pretrain", "cruller_tiny", "latest")
    assert cfg.data.train.source_weights == [0.8, 0.2]
    _, cfg = parse(base + ["--train.checkpoint-path", "runs/x/checkpoints/step_00000008", "--resume", "False",
                           "--data.train.source_weights", "[0.5, 0.5]"])
    assert cfg.train.resume == "runs/x/checkpoints/step_00000008" and cfg.data.train.source_weights == [0.5, 0.5]
    _, cfg = parse(["eval", "--eval.task-name", "cruller_finetune_sroie", "--data.eval.source", synth_shards,
                    "--eval.checkpoint-path", "x"])
    assert cfg.task.name == "finetune_sroie"


def test_objective_names_of_the_tasks(synth_shards):
    """read_pretrain and finetune_<set> name the objectives (every family trains them);
    huggingface/pixparse's cruller_* names are aliases, and runs, checkpoints and logs keep the one name."""
    base = ["pretrain", "--data.train.source", synth_shards, "--data.train.num-samples", "8"]
    for alias, name in (("cruller_pretrain", "read_pretrain"), ("read_pretrain", "read_pretrain"),
                        ("cruller_finetune_cord", "finetune_cord"), ("finetune_xent", "finetune_xent")):
        _, cfg = parse(base + ["--task.name", alias])
        assert cfg.task.name == name
    _, cfg = parse(["eval", "--eval.task-name", "finetune_sroie", "--data.eval.source", synth_shards,
                    "--eval.checkpoint-path", "x"])
    assert cfg.task.name == "finetune_sroie"


def test_a_mistyped_flag_is_answered_in_one_line_with_a_suggestion(capsys):
    from pixparse.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["pretrain", "--data.train.source", "x.tar", "--data.train.num_samples", "8", "--task.opt.learnig_rate", "1"])
    message = str(exc.value.code)
    assert message.count("\n") == 0 and "did you mean --task.opt.learning_rate" in message, message
    assert not capsys.readouterr().err.strip()


def test_help_opens_with_one_usage_line_and_eval_lists_no_training_flags():
    """A subcommand's --help starts with a one-line usage (not every flag twice) and its own
    description; eval's lists the objective and generation settings, none of the optimizer's or
    the model's (the checkpoint brings those), and a training flag given to eval says so."""
    out = _cli("pretrain", "--help")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "usage: pixparse [options] pretrain [--config FILE] [--SECTION.FLAG VALUE ...]", lines[:3]
    assert lines[2].startswith("Train a model"), lines[:4]
    assert "--task.opt.learning_rate" in out.stdout and "--task.model_name" in out.stdout
    out = _cli("eval", "--help")
    usage = out.stdout.splitlines()[0]
    assert out.returncode == 0 and usage.endswith("eval [--config FILE] [--SECTION.FLAG VALUE ...]"), usage
    assert "--task.num_beams" in out.stdout and "--eval.checkpoint_path" in out.stdout
    for flag in ("--task.opt.", "--task.init_from", "--task.num_intervals", "--task.ctc_weight",
                 "--task.encoder_grad_checkpointing", "--task.model_name", "--data.train."):
        assert flag not in out.stdout, flag
    out = _cli("eval", "--eval.checkpoint_path", "x", "--task.init_from", "y")
    assert out.returncode != 0 and "--task.init_from: a training flag" in out.stderr, out.stderr
