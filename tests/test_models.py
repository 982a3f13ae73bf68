import json

import pytest
import torch

from pixparse.models import create_model, get_model_config, list_presets


def test_presets_registered():
    assert {"cruller_tiny", "cruller_base", "cruller_large"} <= set(list_presets())


def test_tiny_forward_backward_every_parameter_gets_a_gradient():
    cfg = get_model_config("cruller_tiny")
    model = create_model(cfg, vocab_size=300, pad_token_id=0, eos_token_id=1)
    h, w = cfg.image_encoder.image_size
    image = torch.randn(2, 1, h, w)
    ids = torch.randint(0, 300, (2, 17))
    logits = model(image, ids, torch.ones_like(ids))
    assert logits.shape == (2, 17, 300)
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_projection_only_when_widths_differ():
    cfg = get_model_config("cruller_tiny")  # encoder 64 wide, decoder 96
    model = create_model(cfg, 300, 0, 1)
    assert isinstance(model.enc_to_dec_proj, torch.nn.Linear)
    cfg.text_decoder.config["d_model"] = 64
    assert isinstance(create_model(cfg, 300, 0, 1).enc_to_dec_proj, torch.nn.Identity)


@pytest.mark.parametrize("name,min_m,max_m", [("cruller_base", 150, 175), ("cruller_large", 500, 550)])
def test_large_presets_build_offline_on_meta(name, min_m, max_m):
    cfg = get_model_config(name)
    with torch.device("meta"):
        model = create_model(cfg, vocab_size=50265, pad_token_id=1, eos_token_id=2)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert min_m < n < max_m
    assert len(model.text_decoder.model.model.decoder.layers) == cfg.text_decoder.num_decoder_layers
    h, w = cfg.image_encoder.image_size
    assert model.image_encoder.trunk.patch_embed.img_size == (h, w)


def test_preset_from_json_path_and_unknown_name(tmp_path):
    path = tmp_path / "mine.json"
    d = get_model_config("cruller_tiny").to_dict()
    d["text_decoder"]["max_length"] = 64
    path.write_text(json.dumps(d))
    assert get_model_config(str(path)).text_decoder.max_length == 64
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_model_config("nope")


def test_image_size_must_be_a_multiple_of_the_patch_size():
    from pixparse.models.config import ImageEncoderConfig
    from pixparse.models.image_encoder import validate_encoder_config

    cfg = ImageEncoderConfig(name="vit_tiny_patch16_224", image_size=(100, 96),
                             model_args={"embed_dim": 64, "depth": 1, "num_heads": 2})
    with pytest.raises(ValueError, match=r"not a multiple of .* patch size \[16, 16\].*\[96, 96\]"):
        validate_encoder_config(cfg)


def test_conv_encoder_trains_without_a_flop_formula():
    """A conv trunk (no FLOP formula) must train; throughput reports unknown FLOPs, not a crash."""
    import dataclasses
    import math

    from pixparse.models import get_model_config
    from pixparse.models.config import ImageEncoderConfig
    from pixparse.tasks.config import TaskConfig
    from pixparse.tasks.registry import create_task

    preset = get_model_config("cruller_tiny")
    preset = dataclasses.replace(preset, image_encoder=ImageEncoderConfig(name="resnet10t", image_size=(64, 48)))
    task = create_task(TaskConfig(model_name="cruller_tiny"), preset)
    batch = task.synthetic_batch(2, torch.Generator().manual_seed(0))
    task(batch)["loss"].backward()
    stats = task.batch_stats(batch)
    assert math.isnan(stats["flops"]) and stats["image_tokens"] == 2 * 2 * 2  # 64x48 / 32 -> 2x2


def test_hf_export_of_a_conv_encoder_is_refused_with_the_reason():
    """TimmWrapper gives a conv trunk's (B, C, h, w) map to VisionEncoderDecoderModel's projection
    unflattened: the HF export says so instead of writing a model that fails (the plain export works)."""
    import dataclasses

    import pytest

    from pixparse.models import get_model_config
    from pixparse.models.config import ImageEncoderConfig
    from pixparse.models.export import to_hf_vision_encoder_decoder
    from pixparse.tasks.config import TaskConfig
    from pixparse.tasks.registry import create_task

    preset = get_model_config("cruller_tiny")
    preset = dataclasses.replace(preset, image_encoder=ImageEncoderConfig(name="resnet10t", image_size=(64, 48)))
    task = create_task(TaskConfig(model_name="cruller_tiny"), preset).eval()
    with pytest.raises(ValueError, match=r"resnet10t trunk gives a \(B, C, h, w\) feature map.*--hf false"):
        to_hf_vision_encoder_decoder(task.model, task.export_info()["decoder_start_token_id"])
