import math

import pytest

from pixparse.data.config import DataLoaderConfig
from pixparse.engine.optim import create_optimizer, no_decay_names
from pixparse.engine.schedule import lr_multiplier
from pixparse.engine.train import make_plan
from pixparse.models import create_model, get_model_config
from pixparse.tasks.config import OptimConfig


def test_warmup_then_cosine_to_min():
    f = lr_multiplier("cosine", warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1)
    lin = lr_multiplier("linear", 0, 10)
    assert lin(5) == pytest.approx(0.5)
    assert lr_multiplier("constant", 2, 10)(7) == 1.0


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fraction():
    f = lr_multiplier("wsd", warmup_steps=2, total_steps=20, min_lr_ratio=0.1, decay_fraction=0.25)
    assert [f(s) for s in range(2)] == [0.5, 1.0]
    assert all(f(s) == 1.0 for s in range(2, 15))  # stable until the last 5 of 20 steps
    assert [round(f(s), 4) for s in range(15, 21)] == [1.0, 0.82, 0.64, 0.46, 0.28, 0.1]
    # a decay longer than the steps after warmup starts where warmup ends, at the peak
    whole = lr_multiplier("wsd", warmup_steps=4, total_steps=10, decay_fraction=1.0)
    assert [round(whole(s), 4) for s in range(3, 11)] == [1.0, 1.0, 0.8333, 0.6667, 0.5, 0.3333, 0.1667, 0.0]
    with pytest.raises(ValueError, match="decay_fraction must be in"):
        OptimConfig(schedule="wsd", decay_fraction=0.0)


def test_no_decay_groups_cover_norms_biases_embeddings_tokens():
    model = create_model(get_model_config("cruller_tiny"), 300, 0, 1)
    skip = no_decay_names(model)
    assert "image_encoder.trunk.pos_embed" in skip and "image_encoder.trunk.cls_token" in skip
    assert "text_decoder.model.model.decoder.embed_tokens.weight" in skip
    assert any(n.endswith("norm.weight") for n in skip) and any(n.endswith(".bias") for n in skip)
    assert "image_encoder.trunk.blocks.0.attn.qkv.weight" not in skip
    opt = create_optimizer(model, OptimConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_plan_counts_steps_and_rejects_tiny_intervals():
    data = DataLoaderConfig(source="x.tar", batch_size=2, num_samples=64)
    plan = make_plan(data, OptimConfig(grad_accum_steps=2), num_intervals=3, num_warmup_intervals=0.5, world_size=2)
    assert (plan.global_batch_size, plan.steps_per_interval, plan.total_steps, plan.warmup_steps) == (8, 8, 24, 4)
    with pytest.raises(ValueError, match="smaller than one global batch"):
        make_plan(DataLoaderConfig(source="x.tar", batch_size=64, num_samples=64), OptimConfig(), 1, 0, 2)


def test_interval_unit_makes_a_staircase():
    f = lr_multiplier("linear", warmup_steps=0, total_steps=40, steps_per_interval=10)
    assert [f(s) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert f(10) == f(19) == pytest.approx(0.75)


def test_layer_decay_scales_encoder_blocks_only():
    model = create_model(get_model_config("cruller_tiny"), 300, 0, 1)  # 2 encoder blocks
    opt = create_optimizer(model, OptimConfig(learning_rate=1.0, layer_decay=0.5))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["image_encoder.trunk.patch_embed.proj.weight"])] == 0.25
    assert lr_of[id(named["image_encoder.trunk.blocks.0.attn.qkv.weight"])] == 0.5
    assert lr_of[id(named["image_encoder.trunk.blocks.1.attn.qkv.weight"])] == 1.0
    assert lr_of[id(named["text_decoder.model.model.decoder.layers.0.fc1.weight"])] == 1.0
    assert len(lr_of) == len(named)
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert wd_of[id(named["image_encoder.trunk.pos_embed"])] == 0.0
    assert wd_of[id(named["image_encoder.trunk.blocks.0.attn.qkv.weight"])] > 0


def test_config_hash_ignores_how_the_run_was_launched():
    from pixparse.engine.train import config_hash

    cfg = {"train": {"resume": None, "seed": 1}, "task": {"model_name": "x"}, "local_rank": -1}
    resumed = {"train": {"resume": "latest", "seed": 1}, "task": {"model_name": "x"}, "local_rank": 0}
    assert config_hash(cfg) == config_hash(resumed)
    assert config_hash(cfg) != config_hash({**cfg, "train": {"resume": None, "seed": 2}})


def test_deepspeed_nvtx_ranges_follow_the_flag(monkeypatch):
    """--train.nvtx_ranges reaches DeepSpeed's instrumented functions: off (the default), they push
    no range; on, they do."""
    import deepspeed.utils.nvtx as nvtx
    from deepspeed.accelerator import get_accelerator

    from pixparse.engine.config import TrainConfig
    from pixparse.engine.train import deepspeed_nvtx_ranges

    pushed = []
    monkeypatch.setattr(nvtx, "enable_nvtx", nvtx.enable_nvtx)  # restored after the test
    monkeypatch.setattr(type(get_accelerator()), "range_push", lambda self, msg, **kw: pushed.append(msg))
    monkeypatch.setattr(type(get_accelerator()), "range_pop", lambda self, **kw: None)
    instrumented = nvtx.instrument_w_nvtx(lambda: 7)
    deepspeed_nvtx_ranges(TrainConfig().nvtx_ranges)
    assert instrumented() == 7 and pushed == []
    deepspeed_nvtx_ranges(True)
    assert instrumented() == 7 and len(pushed) == 1


def test_absent_nvml_is_not_probed_every_step(monkeypatch):
    """Where NVML is absent, DeepSpeed's PYTORCH_NVML_BASED_CUDA_CHECK=1 only makes every
    torch.cuda.is_available() (each optimizer step) try to load it: turned off, with the same
    answer; an explicit user choice ("0") is left alone."""
    import ctypes
    import os

    import torch

    from pixparse.engine.dist import skip_absent_nvml_probe

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        pytest.skip("NVML is present here: the probe is kept")
    except OSError:
        pass
    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    answer = torch.cuda.is_available()
    assert skip_absent_nvml_probe() and os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "0"
    assert torch.cuda.is_available() == answer
    assert not skip_absent_nvml_probe() and os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] == "0"


def test_flat_gradient_norm_in_chunks_equals_the_per_tensor_norm(monkeypatch):
    """The clipping norm over a flat gradient buffer, taken in chunks (no float64 copy of the whole
    buffer), equals DeepSpeed's tensor-by-tensor float64 sum to float64 rounding, and after the
    float32 rounding ZeRO-1/2 apply, exactly; a buffer of one chunk and one of many alike."""
    import torch

    from pixparse.engine import zero_fast

    torch.manual_seed(0)
    shapes = [(37, 5), (1000,), (64, 64), (3,), (250, 9)]
    flat = torch.randn(sum(math.prod(s) for s in shapes)) * 3
    grads = [t.view(s) for t, s in zip(flat.split([math.prod(s) for s in shapes]), shapes)]
    per_tensor = zero_fast._sum_of_squares(grads, torch.float64)
    for chunk in (1 << 20, 1000):  # one chunk; 9 chunks across the tensors' boundaries
        monkeypatch.setattr(zero_fast, "_NORM_CHUNK", chunk)
        flat_sum = zero_fast._flat_sum_of_squares(flat, torch.float64)
        assert flat_sum.dtype == torch.float64
        assert flat_sum.item() == pytest.approx(per_tensor.item(), rel=1e-14)
        assert torch.equal(flat_sum.float(), per_tensor.float())


def test_deepspeed_patches_fall_back_on_another_version_or_a_missing_attribute(monkeypatch, caplog):
    """On a DeepSpeed the patches were not tested on, or one lacking an attribute they replace,
    DeepSpeed's own methods stay, with one log line naming why and the flag."""
    import deepspeed
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    from pixparse.engine import zero_fast

    bare = object.__new__(DeepSpeedZeroOptimizer)  # no attributes: every one the patch needs is missing
    with caplog.at_level("WARNING", logger="pixparse.engine.zero_fast"):
        assert zero_fast.install(bare) == []
    assert "DeepSpeedZeroOptimizer has no dp_process_group" in caplog.text
    assert "--train.patch_deepspeed" in caplog.text and not hasattr(bare, "_pixparse_original_get_grad_norm_direct")
    monkeypatch.setattr(deepspeed, "__version__", "0.21.0")
    caplog.clear()
    with caplog.at_level("WARNING", logger="pixparse.engine.zero_fast"):
        assert zero_fast.install(object.__new__(DeepSpeedZeroOptimizer_Stage3)) == []
    assert "DeepSpeed 0.21.0 is not 0.19.x" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="pixparse.engine.zero_fast"):
        assert zero_fast.local_collectives(True) is False
    assert "DeepSpeed 0.21.0 is not 0.19.x" in caplog.text and "own collectives kept" in caplog.text
    assert zero_fast.install(object()) == []  # not a ZeRO optimizer: nothing to patch, nothing logged


def test_log_lines_go_above_a_shown_progress_bar_not_over_it(capsys):
    """With the bar shown, a console log line is written through tqdm (which clears the bar,
    writes the line, redraws the bar); without, the handlers stay as they are."""
    import logging
    import sys

    from pixparse.engine.logging import logs_above_bar

    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout)
    root.addHandler(handler)
    try:
        with logs_above_bar(False):
            assert handler in root.handlers
        with logs_above_bar(True):
            assert handler not in root.handlers
            assert any(type(h).__name__ == "_TqdmLoggingHandler" for h in root.handlers)
        assert handler in root.handlers
    finally:
        root.removeHandler(handler)
