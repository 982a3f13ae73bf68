import torch

from pixparse.tasks.config import TaskConfig
from pixparse.tasks.base import token_cross_entropy
from pixparse.tasks.pretrain import TaskReadPretrain


def _batch(task, ids_list, pad_to):
    pad = task.tokenizer.pad_token_id
    n = len(ids_list)
    ids = torch.full((n, pad_to), pad)
    mask = torch.zeros((n, pad_to), dtype=torch.long)
    labels = torch.full((n, pad_to), -100)
    for i, seq in enumerate(ids_list):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, 1 : len(seq)] = torch.tensor(seq[1:])
    h, w = task.model_cfg.image_encoder.image_size
    image = torch.randint(0, 256, (n, 1, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return {"image": image, "input_ids": ids, "attention_mask": mask, "labels": labels}


def test_loss_ignores_padding():
    task = TaskReadPretrain(TaskConfig(model_name="cruller_tiny")).eval()
    prompt = task.tokenizer.convert_tokens_to_ids("<s_pretrain>")
    seq = [prompt] + task.tokenizer("a short line", add_special_tokens=False).input_ids + [task.tokenizer.eos_token_id]
    with torch.no_grad():
        tight = task(_batch(task, [seq], len(seq)))
        padded = task(_batch(task, [seq], len(seq) + 16))
    assert torch.allclose(tight["loss"], padded["loss"], atol=1e-5)
    assert tight["num_target_tokens"] == padded["num_target_tokens"] == len(seq) - 1


def test_token_cross_entropy_shifts_and_ignores():
    logits = torch.zeros(1, 4, 5)
    logits[0, 0, 3] = 10.0  # position 0 predicts label at position 1
    labels = torch.tensor([[-100, 3, -100, -100]])
    loss, n = token_cross_entropy(logits, labels)
    assert n == 1 and loss < 1e-3


def test_normalize_maps_uint8_to_model_range():
    task = TaskReadPretrain(TaskConfig(model_name="cruller_tiny"))
    x = task.normalize(torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 1, 2))
    mean, std = task.pixel_mean.item() / 255, task.pixel_std.item() / 255
    assert torch.allclose(x.flatten(), torch.tensor([-mean / std, (1 - mean) / std]), atol=1e-5)
