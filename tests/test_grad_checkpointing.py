import torch

from pixparse.engine.metrics import count_saved_activations
from pixparse.tasks.config import TaskConfig
from pixparse.tasks.pretrain import TaskCrullerPretrain


def _run(encoder: bool, decoder: bool):
    torch.manual_seed(0)
    task = TaskCrullerPretrain(TaskConfig(
        model_name="cruller_tiny", encoder_grad_checkpointing=encoder, decoder_grad_checkpointing=decoder)).train()
    h, w = task.model_cfg.image_encoder.image_size
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, len(task.tokenizer), (2, 40), generator=g)
    batch = {"image": torch.randint(0, 256, (2, 1, h, w), dtype=torch.uint8, generator=g),
             "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    with count_saved_activations(exclude=task.parameters()) as saved:
        loss = task(batch)["loss"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in task.named_parameters()}
    return loss.detach(), grads, saved["bytes"]


def test_checkpointing_each_tower_keeps_loss_and_grads_and_saves_memory():
    loss, grads, full = _run(False, False)
    for encoder, decoder in ((True, False), (False, True), (True, True)):
        loss_ac, grads_ac, saved = _run(encoder, decoder)
        assert torch.allclose(loss, loss_ac, atol=1e-6)
        for n, g in grads.items():
            assert torch.allclose(g, grads_ac[n], atol=1e-6), n
        assert saved < full, (encoder, decoder, saved, full)
