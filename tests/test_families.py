"""The pix2struct (packed variable-resolution patches) and pali (image tokens into a text
encoder) families: patching, packing, attention isolation between packed pages, FLOPs."""
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pixparse.data.patches import (
    PatchPage, collate_patches, grow_to_fill, pack_rows, page_image, patch_grid, patchify, unpatchify,
)
from pixparse.data.transforms import resize_bicubic
from pixparse.models import create_model, get_model_config
from pixparse.models.flops import pali_flops, pix2struct_flops
from pixparse.tasks.config import TaskConfig
from pixparse.tasks.registry import create_task


@pytest.mark.parametrize("size", [(1000, 463), (1000, 754), (2200, 1700), (40, 30), (3000, 300), (300, 3000)])
@pytest.mark.parametrize("max_patches", [64, 2048])
def test_patch_grid_keeps_aspect_and_budget(size, max_patches):
    h, w = size
    rows, cols = patch_grid(h, w, 16, max_patches)
    assert 1 <= rows * cols <= max_patches
    assert rows <= max(1, -(-h // 16)) and cols <= max(1, -(-w // 16))  # never enlarged
    if rows > 4 and cols > 4:  # the aspect ratio survives up to the rounding of one patch per side
        assert (rows - 1) / (cols + 1) <= h / w <= (rows + 1) / (cols - 1)
    capped = rows == -(-h // 16) or cols == -(-w // 16)
    if not capped:  # fills the budget to within one row or column
        assert (rows + 1) * (cols + 1) > max_patches


def test_small_page_is_not_enlarged_and_large_page_fills():
    small = PatchPage(16, 2048)(Image.new("L", (320, 480), 255))
    assert small["patches"].shape == (20 * 30, 256)
    large = PatchPage(16, 2048)(Image.new("L", (1700, 2200), 255))
    assert 1900 < large["patches"].shape[0] <= 2048


def test_patches_round_trip_to_the_resized_page():
    rng = random.Random(0)
    image = Image.effect_noise((90, 130), 60).convert("L")  # (W, H) 90x130
    out = PatchPage(8, 4096)(image, rng)
    rows, cols = patch_grid(130, 90, 8, 4096)
    back = unpatchify(out["patches"], out["patch_pos"].long(), 8)
    assert torch.equal(back, resize_bicubic(image, (cols * 8, rows * 8)))
    # torchvision's antialiased bicubic is Pillow's filter: at most one grey level apart
    pillow = torch.from_numpy(np.array(image.resize((cols * 8, rows * 8), Image.Resampling.BICUBIC)))
    assert (back[0].int() - pillow.int()).abs().max() <= 1
    assert out["patch_pos"][:, 0].max() == rows - 1 and out["patch_pos"][:, 1].max() == cols - 1


def test_pack_rows_first_fit_decreasing():
    rows = pack_rows([100, 30, 60, 90, 20], capacity=128)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3, 4]
    assert all(sum([100, 30, 60, 90, 20][i] for i in r) <= 128 for r in rows)
    assert len(rows) == 3  # 300 patches need at least 3 rows of 128
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([129], capacity=128)


def _page_items(sizes, patch=8, max_patches=192, min_patches=None, seed=0):
    pp = PatchPage(patch, max_patches, min_patches=min_patches)
    rng = random.Random(seed)
    items = []
    for k, (w, h) in enumerate(sizes):
        img = Image.effect_noise((w, h), 50 + k).convert("L")
        items.append({**pp.prepare(img, rng), "input_ids": [5, 6 + k, 7, 2], "prompt_length": 1})
    return items


def _patches(item, patch=8):
    return patchify(item["page"], item["budget"], patch)


def test_collate_packs_pages_and_each_sample_finds_its_page():
    items = _page_items([(64, 200), (40, 40), (30, 60), (200, 64), (24, 24)])
    packed = collate_patches(items, pad_id=0, max_patches=192, patch_size=8)
    padded = collate_patches(items, pad_id=0, max_patches=192, patch_size=8, pack=False)
    assert padded["patches"].shape[0] == 5 and packed["patches"].shape[0] < 5
    real = sum(_patches(it)["patches"].shape[0] for it in items)
    assert int((packed["segment"] > 0).sum()) == int((padded["segment"] > 0).sum()) == real
    for batch in (packed, padded):
        for i, it in enumerate(items):
            cut = _patches(it)
            assert torch.equal(page_image(batch, i, 8), unpatchify(cut["patches"], cut["patch_pos"].long(), 8))


def test_packing_grows_sampled_pages_to_fill_their_rows():
    """With resolution sampling, packed rows come out nearly full: each page grows from its drawn
    budget (never below it, never past its max_patches grid) until its row is full."""
    sizes = [(300, 400), (200, 640), (500, 380), (400, 300), (640, 480), (260, 700), (350, 350), (420, 600)]
    for seed in (3, 4, 5):
        items = _page_items(sizes, max_patches=768, min_patches=192, seed=seed)
        padded = collate_patches(items, pad_id=0, max_patches=768, patch_size=8, pack=False)
        packed = collate_patches(items, pad_id=0, max_patches=768, patch_size=8)
        share = lambda b: 1 - float((b["segment"] > 0).float().mean())  # noqa: E731
        assert share(padded) > 0.2 and share(packed) < 0.05, (seed, share(padded), share(packed))
        for i, it in enumerate(items):
            drawn = _patches(it)["patches"].shape[0]
            got = page_image(packed, i, 8)
            assert drawn <= (got.shape[1] // 8) * (got.shape[2] // 8) <= 768
    # two 10x10-patch pages drawn at 36 patches each grow to fill a row of 192 (96 each at most)
    grown = grow_to_fill([(80, 80), (80, 80)], [36, 36], 192, 8)
    assert all(b >= 36 for b in grown)
    assert 160 <= sum(math.prod(patch_grid(80, 80, 8, b)) for b in grown) <= 192


def test_packed_pages_do_not_see_each_other():
    """A page's encoder output and its decoder logits are the same packed with others, padded
    alone, or packed beside a different page: no attention crosses pages."""
    torch.manual_seed(0)
    task = create_task(TaskConfig(model_name="pix2struct_tiny")).eval()
    a, b, c = _page_items([(64, 120), (40, 56), (48, 48)])
    one = collate_patches([a, b], pad_id=0, max_patches=192, patch_size=8)
    two = collate_patches([a, c], pad_id=0, max_patches=192, patch_size=8)
    alone = collate_patches([a], pad_id=0, max_patches=192, patch_size=8, pack=False)
    assert one["patches"].shape[0] == 1 and two["patches"].shape[0] == 1  # really packed together
    with torch.no_grad():
        outs = []
        for batch in (one, two, alone):
            memory, mask = task.model.encode(task.pixels(batch))
            outs.append(memory[0][mask[0].bool()])
            logits = task.model(task.pixels(batch), batch["input_ids"], batch["attention_mask"])[0]
            outs.append(logits)
    torch.testing.assert_close(outs[0], outs[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[0], outs[4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1], outs[3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[1], outs[5], atol=1e-5, rtol=1e-5)


def test_question_is_drawn_on_the_page_for_pix2struct_only():
    from pixparse.data.decode import Page
    from pixparse.tasks.base import Example

    page = Page(image=Image.new("L", (200, 300), 255), text="", page_index=0)
    ex = [Example("<s_docvqa><s_question>what total?</s_question><s_answer>", "12</s_answer>", ["12"],
                  header="what total?")]
    from pixparse.data.config import DataLoaderConfig

    cfg = DataLoaderConfig(source="unused", num_samples=1)
    for name in ("pix2struct_tiny", "pali_tiny", "cruller_tiny"):
        task = create_task(TaskConfig(name="finetune_docvqa", model_name=name))
        pre = task.preprocess(cfg)
        tok = task.tokenizer
        full = tok(ex[0].prompt, add_special_tokens=False).input_ids
        ids, prompt_length = pre.text(ex[0].prompt, ex[0].target)
        if name == "cruller_tiny":  # the decoder reads the question
            assert ids[:prompt_length] == full
        else:  # the decoder gets the task token only
            assert ids[:prompt_length] == full[:1]
        if name == "pix2struct_tiny":
            plain = pre.image_transform(page.image)
            drawn = pre.image_transform(page.image, header="what total?")
            assert not torch.equal(plain["patches"], drawn["patches"][: plain["patches"].shape[0]])
            top = unpatchify(drawn["patches"], drawn["patch_pos"].long(), 8)[0]
            assert (top[: top.shape[0] // 6] < 128).any()  # ink in the header band
            # legible at the model's resolution: on a 754 px form cut to <= 192 patches the letters
            # stay about a patch tall (1/40 of the width would leave 2 px letters)
            form = PatchPage(8, 192)(Image.new("L", (754, 1000), 255), header="Date:")
            ink_rows = (unpatchify(form["patches"], form["patch_pos"].long(), 8)[0] < 160).any(dim=1).sum()
            assert ink_rows >= 5, int(ink_rows)
        if name == "pali_tiny":  # the text encoder reads the question, not the task tokens
            assert pre.text.encoder_ids(ex[0].header) == tok("what total?", add_special_tokens=False).input_ids


@pytest.mark.parametrize("text_len", [7, 33])
def test_pix2struct_formula_matches_flop_counter(text_len):
    model = create_model(get_model_config("pix2struct_tiny"), 300, 0, 1)
    items = _page_items([(64, 200), (40, 40), (200, 64)])
    batch = collate_patches(items, pad_id=0, max_patches=192, patch_size=8)
    pixels = {k: batch[k] for k in ("patch_pos", "segment", "sample_row", "sample_segment")}
    pixels["patches"] = batch["patches"].float() / 255
    _assert_pix2struct_flops(model, pixels, text_len)


def _assert_pix2struct_flops(model, pixels, text_len):
    """pix2struct_flops of the batch's packed rows equals what FlopCounterMode counts, forward and
    a training step's forward and backward."""
    samples = pixels["sample_row"].shape[0]
    ids = torch.randint(0, 300, (samples, text_len))
    rows, row_len = pixels["segment"].shape
    fwd, train = pix2struct_flops(model, rows, row_len, samples, text_len)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as counter:
            model(pixels, ids, torch.ones_like(ids))
        assert counter.get_total_flops() == fwd
        with FlopCounterMode(display=False) as counter:
            model(pixels, ids, torch.ones_like(ids)).float().logsumexp(-1).sum().backward()
        assert counter.get_total_flops() == train


def _stem_reader():
    """pix2struct_reader_tiny with a conv stem over each page (image_encoder.patch_stem)."""
    from pixparse.models.config import ModelConfig

    preset = get_model_config("pix2struct_reader_tiny").to_dict()
    preset["image_encoder"]["patch_stem"] = [16, 32, 64]
    return create_model(ModelConfig.from_dict(preset), 300, 0, 1)


def _reader_lines(n, pack):
    """n noise lines of 256x32 px in pix2struct_reader_tiny's packed rows (128 patches of 8x8 each)."""
    items = _page_items([(256, 32)] * n, max_patches=128)
    batch = collate_patches(items, pad_id=0, max_patches=256 if pack else 128, patch_size=8, pack=pack)
    pixels = {k: batch[k] for k in ("patch_pos", "segment", "sample_row", "sample_segment")}
    pixels["patches"] = batch["patches"].float() / 255
    return pixels


def test_pix2struct_patch_stem_sees_across_patch_borders_and_not_across_pages():
    """The conv stem (patch_stem) puts each page back together: a pixel changed in one patch
    changes its neighbours' tokens (a linear patch embedding would not), never the tokens of
    another page packed in the same row."""
    torch.manual_seed(0)
    model = _stem_reader()
    stem = model.image_encoder.stem
    pixels = _reader_lines(2, pack=True)  # two lines in one row of 256 slots
    assert pixels["segment"].shape == (1, 256) and set(pixels["segment"][0].tolist()) == {1, 2}
    args = (pixels["patch_pos"], pixels["segment"])
    with torch.no_grad():
        before = stem(pixels["patches"], *args)
        changed = pixels["patches"].clone()
        changed[0, 5, 7] += 1.0  # page 1, patch (row 0, column 5): its top row's last pixel
        after = stem(changed, *args)
    moved = (after - before).abs().amax(-1)[0]  # (slots,)
    pos = pixels["patch_pos"][0]
    assert moved[5] > 0 and moved[6] > 0  # the patch and its right neighbour on the page
    assert moved[128:].max() == 0  # the other line
    far = (pos[:, 1] - 5).abs() > 1  # patches beyond the neighbours
    assert moved[:128][far[:128]].max() == 0


@pytest.mark.parametrize("text_len", [7, 33])
def test_pix2struct_patch_stem_formula_matches_flop_counter_on_lines(text_len):
    """With the conv stem the formula counts its convs per patch slot: exact where each page
    fills its row, as lines do."""
    model = _stem_reader()
    pixels = _reader_lines(3, pack=False)
    assert pixels["segment"].shape == (3, 128) and (pixels["segment"] > 0).all()
    _assert_pix2struct_flops(model, pixels, text_len)


def test_patch_stem_is_for_pix2struct_and_matches_the_patch_size():
    from pixparse.models.config import ModelConfig

    preset = get_model_config("pix2struct_reader_tiny").to_dict()
    preset["image_encoder"]["patch_stem"] = [16, 32]
    with pytest.raises(ValueError, match=r"patches of 8 px need log2\(8\)"):
        ModelConfig.from_dict(preset)
    cruller = get_model_config("cruller_reader_tiny").to_dict()
    cruller["image_encoder"]["patch_stem"] = [16, 32, 64]
    with pytest.raises(ValueError, match="patch_stem is for pix2struct"):
        ModelConfig.from_dict(cruller)


@pytest.mark.parametrize("text_len,prompt_len", [(7, 1), (33, 9)])
def test_pali_formula_matches_flop_counter(text_len, prompt_len):
    model = create_model(get_model_config("pali_tiny"), 300, 0, 1)
    h, w = model.cfg.image_encoder.image_size
    image, ids = torch.randn(2, 1, h, w), torch.randint(0, 300, (2, text_len))
    prompt = torch.randint(0, 300, (2, prompt_len))
    fwd, train = pali_flops(model, text_len, prompt_len)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as counter:
            model(image, ids, torch.ones_like(ids), prompt, torch.ones_like(prompt))
        assert counter.get_total_flops() == 2 * fwd
        with FlopCounterMode(display=False) as counter:
            model(image, ids, torch.ones_like(ids), prompt, torch.ones_like(prompt)).float().logsumexp(-1).sum().backward()
        assert counter.get_total_flops() == 2 * train


@pytest.mark.parametrize("name", ["pix2struct_tiny", "pali_tiny"])
def test_every_parameter_gets_a_gradient(name):
    from tests.test_generate import _pages

    task = create_task(TaskConfig(model_name=name))
    batch = _pages(task, 3, seed=0)
    task(batch)["loss"].backward()
    missing = [n for n, p in task.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing


@pytest.mark.parametrize("name", ["pix2struct_tiny", "pali_tiny"])
def test_export_round_trip_and_init_from(name, tmp_path):
    from pixparse.models.export import hf_unsupported, load_exported, save_exported
    from tests.test_generate import _pages

    task = create_task(TaskConfig(model_name=name)).eval()
    save_exported(task.model, task.model_cfg, task.tokenizer, str(tmp_path), task.export_info())
    model, _, info = load_exported(str(tmp_path))
    batch = _pages(task, 3, seed=4)
    args = (task.pixels(batch), batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        assert torch.equal(task.model(*args, **task.text_inputs(batch)), model(*args, **task.text_inputs(batch)))
    assert hf_unsupported(model)  # no transformers class: said, not attempted
    again = create_task(TaskConfig(init_from=str(tmp_path))).eval()
    with torch.no_grad():
        assert torch.equal(again.model(*args, **task.text_inputs(batch)), model(*args, **task.text_inputs(batch)))


def test_resolution_sampling_draws_each_budget_from_the_range():
    image = Image.new("L", (1700, 2200), 255)
    pp = PatchPage(16, 1024, min_patches=256)
    counts = [pp(image, random.Random(s))["patches"].shape[0] for s in range(40)]
    assert min(counts) >= 200 and max(counts) <= 1024 and len(set(counts)) > 10
    assert pp(image)["patches"].shape[0] > 950  # no RNG (eval): the full budget
    again = [pp(image, random.Random(s))["patches"].shape[0] for s in range(40)]
    assert again == counts  # drawn from the sample's RNG: reproducible


def test_pretrained_towers_load_from_local_files(tmp_path):
    """pretrained: the patch encoder takes a timm ViT's blocks and patch weights (a local weights
    file here; a hub tag the same way), and pali's text side a transformers T5 folder."""
    import timm
    from safetensors.torch import save_file
    from transformers import T5Config, T5ForConditionalGeneration

    from pixparse.models.config import ModelConfig

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, in_chans=1, img_size=(8, 8),
                            patch_size=8, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    cfg = get_model_config("pix2struct_tiny").to_dict()
    cfg["image_encoder"]["pretrained_tag"] = str(tmp_path / "vit.safetensors")
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=300, d_model=96, d_kv=48, d_ff=192, num_layers=2,
                                             num_decoder_layers=2, num_heads=2))
    t5.save_pretrained(str(tmp_path / "t5"))
    from pixparse.models.pix2struct import PatchEncoder

    enc = PatchEncoder(ModelConfig.from_dict(cfg).image_encoder, pretrained=True)
    assert torch.equal(enc.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)
    assert torch.equal(enc.patch_embed.weight, vit.patch_embed.proj.weight.flatten(1))
    pali = get_model_config("pali_tiny").to_dict()
    pali["text_decoder"]["name"] = str(tmp_path / "t5")
    pali["image_encoder"]["pretrained_tag"] = None
    pali["image_encoder"]["name"] = "vit_tiny_patch16_224"
    model = create_model(ModelConfig.from_dict(pali), 300, 0, 1, pretrained=False)
    assert not torch.equal(model.text_decoder.model.shared.weight, t5.shared.weight)
    from pixparse.models.text_decoder import TextEncoderDecoder

    loaded = TextEncoderDecoder(ModelConfig.from_dict(pali).text_decoder, 300, 0, 1, pretrained=True)
    assert torch.equal(loaded.model.shared.weight, t5.shared.weight)


@pytest.mark.parametrize("name,family,keys", [
    ("cruller_tiny", "cruller", {"image"}),
    ("pali_tiny", "pali", {"image", "prompt_ids", "prompt_mask"}),
    ("pix2struct_tiny", "pix2struct", {"patches", "patch_pos", "segment", "sample_row", "sample_segment"}),
])
def test_each_family_feeds_its_model_through_the_one_interface(name, family, keys):
    """The task asks the preset's family, never a type string: the family's synthetic inputs are
    what its collate makes, its pixels and text inputs are what its model encodes, and the page
    images it gives back are the pages the model saw."""
    from tests.test_generate import _pages

    task = create_task(TaskConfig(model_name=name)).eval()
    assert task.family.name == family == task.model_cfg.type
    synthetic = task.synthetic_batch(2, torch.Generator().manual_seed(0))
    real = _pages(task, 2, seed=1)
    inputs = {"input_ids", "attention_mask", "labels"}
    assert set(synthetic) == inputs | keys and keys <= set(real)
    for batch in (synthetic, real):
        with torch.no_grad():
            memory, mask = task.model.encode(task.pixels(batch), **task.text_inputs(batch))
        assert memory.shape[0] == 2 and (mask is None) == (family == "cruller")
        assert task.page_image(batch, 1).dtype == torch.uint8
    assert task.batch_stats(synthetic)["image_tokens"] > 0


def test_a_model_type_without_a_family_is_refused_by_name():
    import dataclasses

    from pixparse.tasks.family import get_family

    task = create_task(TaskConfig(model_name="cruller_tiny"))
    with pytest.raises(ValueError, match=r"model type 'donut' has no family; known: \['cruller', 'pali', 'pix2struct'\]"):
        get_family(dataclasses.replace(task.model_cfg, type="donut"), task.model)
