import pytest
import torch

from pixparse.engine.throughput import count_saved_activations
from pixparse.tasks.config import TaskConfig
from pixparse.tasks.pretrain import TaskReadPretrain


def _run(encoder: bool, decoder: bool, preset: str = "cruller_tiny"):
    torch.manual_seed(0)
    task = TaskReadPretrain(TaskConfig(
        model_name=preset, encoder_grad_checkpointing=encoder, decoder_grad_checkpointing=decoder)).train()
    g = torch.Generator().manual_seed(3)
    batch = task.synthetic_batch(2, g)  # random pixels (or full patch rows), random text
    with count_saved_activations(exclude=task.parameters()) as saved:
        loss = task(batch)["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in task.named_parameters()}
    return loss.detach(), grads, saved["bytes"]


@pytest.mark.parametrize("preset", ["cruller_tiny", "pix2struct_tiny", "pali_tiny"])
def test_checkpointing_each_tower_keeps_loss_and_grads_and_saves_memory(preset):
    loss, grads, full = _run(False, False, preset)
    for encoder, decoder in ((True, False), (False, True), (True, True)):
        loss_ac, grads_ac, saved = _run(encoder, decoder, preset)
        assert torch.allclose(loss, loss_ac, atol=1e-6)
        for n, g in grads.items():
            assert torch.allclose(g, grads_ac[n], atol=1e-6), n
        assert saved < full, (encoder, decoder, saved, full)
