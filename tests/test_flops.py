import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pixparse.engine.metrics import mfu, peak_tflops
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
            logits = model(image, ids, torch.ones_like(ids))
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
