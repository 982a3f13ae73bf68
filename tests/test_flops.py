import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pixparse.engine.throughput import mfu, peak_tflops
from pixparse.models import create_model, get_model_config
from pixparse.models.flops import cruller_flops


@pytest.mark.parametrize("text_len", [7, 33])
def test_formula_matches_flop_counter(text_len):
    model = create_model(get_model_config("cruller_tiny"), 300, 0, 1)
    h, w = model.cfg.image_encoder.image_size
    image, ids = torch.randn(2, 1, h, w), torch.randint(0, 300, (2, text_len))
    fwd, train = cruller_flops(model, text_len)
    # The fused CPU attention kernel is invisible to the counter: count the math path.
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as counter:
            model(image, ids, torch.ones_like(ids))
        assert counter.get_total_flops() == 2 * fwd
        with FlopCounterMode(display=False) as counter:
            model(image, ids, torch.ones_like(ids)).float().logsumexp(-1).sum().backward()
        assert counter.get_total_flops() == 2 * train


def test_peak_table_and_mfu():
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert peak_tflops("cpu", "bfloat16") is None
    assert mfu(494.5, 989.0) == pytest.approx(0.5)
    assert mfu(10.0, None) is None


@pytest.mark.parametrize("name", ["cruller_tiny", "pix2struct_tiny"])
def test_batch_stats_counts_each_shape_once(name, monkeypatch):
    """A step's FLOPs come from the formula once per batch shape (the walk over the model's
    blocks is Python the engine would pay on every step), the same numbers every time, and a new
    shape is counted anew."""
    import pixparse.tasks.family as family
    from pixparse.tasks.config import TaskConfig
    from pixparse.tasks.registry import create_task

    task = create_task(TaskConfig(model_name=name))
    formula = "pix2struct_flops" if name.startswith("pix2struct") else "cruller_flops"
    calls, real = [], getattr(family, formula)
    monkeypatch.setattr(family, formula, lambda *a: calls.append(a) or real(*a))
    batch = task.synthetic_batch(2, torch.Generator().manual_seed(0))
    first, again = task.batch_stats(batch), task.batch_stats(batch)
    assert first == again and first["flops"] > 0 and len(calls) == 1
    task.batch_stats(task.synthetic_batch(3, torch.Generator().manual_seed(0)))
    assert len(calls) == 2
