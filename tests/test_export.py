import torch

from pixparse.models.export import load_exported, save_exported, to_hf_vision_encoder_decoder
from pixparse.tasks.config import TaskConfig
from pixparse.tasks.pretrain import TaskReadPretrain


def _inputs(task, n=2, t=9):
    h, w = task.model_cfg.image_encoder.image_size
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, h, w, generator=g), torch.randint(0, len(task.tokenizer), (n, t), generator=g)


def test_plain_export_round_trip_keeps_ties_and_logits(tmp_path):
    task = TaskReadPretrain(TaskConfig(model_name="cruller_tiny")).eval()
    save_exported(task.model, task.model_cfg, task.tokenizer, str(tmp_path), task.export_info())
    model, tokenizer, info = load_exported(str(tmp_path))
    dec = model.text_decoder.model
    assert dec.lm_head.weight.data_ptr() == dec.model.decoder.embed_tokens.weight.data_ptr()
    assert len(tokenizer) == info["vocab_size"] == len(task.tokenizer)
    assert tokenizer.convert_tokens_to_ids(info["prompt"]) == info["decoder_start_token_id"]
    image, ids = _inputs(task)
    with torch.no_grad():
        assert torch.equal(task.model(image, ids, torch.ones_like(ids)), model(image, ids, torch.ones_like(ids)))


def test_hf_vision_encoder_decoder_matches_and_generates(tmp_path):
    from transformers import VisionEncoderDecoderModel

    task = TaskReadPretrain(TaskConfig(model_name="cruller_tiny")).eval()
    start = task.export_info()["decoder_start_token_id"]
    hf = to_hf_vision_encoder_decoder(task.model, start)
    hf.save_pretrained(str(tmp_path))
    reloaded = VisionEncoderDecoderModel.from_pretrained(str(tmp_path)).eval()
    dec = reloaded.decoder
    assert dec.lm_head.weight.data_ptr() == dec.model.decoder.embed_tokens.weight.data_ptr()
    image, ids = _inputs(task)
    with torch.no_grad():
        ours = task.model(image, ids, torch.ones_like(ids))
        theirs = reloaded(pixel_values=image, decoder_input_ids=ids).logits
        assert torch.allclose(ours, theirs, atol=1e-5)
        out = reloaded.generate(pixel_values=image, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 2 and (out[:, 0] == start).all()


def test_init_from_export_adds_tokens_and_keeps_weights(tmp_path):
    from pixparse.data.tokenizer import create_tokenizer

    # A "previous run" whose tokenizer lacks the pretrain token: it must be added, rows resized.
    source = TaskReadPretrain(TaskConfig(model_name="cruller_tiny")).eval()
    plain_tok = create_tokenizer("byte")
    vocab = len(plain_tok)
    source.model = __import__("pixparse.models", fromlist=["create_model"]).create_model(
        source.model_cfg, vocab, plain_tok.pad_token_id, plain_tok.eos_token_id).eval()
    info = dict(source.export_info(), vocab_size=vocab)
    save_exported(source.model, source.model_cfg, plain_tok, str(tmp_path), info)

    task = TaskReadPretrain(TaskConfig(model_name="ignored", init_from=str(tmp_path))).eval()
    assert len(task.tokenizer) == vocab + 1
    assert task.model.text_decoder.model.get_input_embeddings().weight.shape[0] == vocab + 1
    image, _ = _inputs(task)
    ids = torch.randint(0, vocab, (2, 9))
    with torch.no_grad():
        before = source.model(image, ids, torch.ones_like(ids))
        after = task.model(image, ids, torch.ones_like(ids))
    assert torch.allclose(before, after[..., :vocab], atol=1e-6)


def test_init_from_keeps_the_trained_target_length(tmp_path):
    """A checkpoint trained with --task.max_length 256 is evaluated / fine-tuned at 256, not at the
    preset's 128 (which cut long receipts and their generated fields)."""
    task = TaskReadPretrain(TaskConfig(model_name="cruller_tiny", max_length=256))
    save_exported(task.model, task.model_cfg, task.tokenizer, str(tmp_path), task.export_info())
    assert TaskReadPretrain(TaskConfig(init_from=str(tmp_path))).max_length == 256
    assert TaskReadPretrain(TaskConfig(init_from=str(tmp_path), max_length=64)).max_length == 64


def test_damaged_export_is_refused(tmp_path):
    """A few bytes of the weights flipped (a bad disk or copy) must not load as NaN weights."""
    import pytest

    task = TaskReadPretrain(TaskConfig(model_name="cruller_tiny"))
    save_exported(task.model, task.model_cfg, task.tokenizer, str(tmp_path), task.export_info())
    load_exported(str(tmp_path))  # intact: loads
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-64:-48] = b"\xff" * 16  # inside the tensor area: still parses, values become NaN
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the checksum"):
        load_exported(str(tmp_path))


def test_the_hf_folder_reads_a_page_in_transformers_alone_as_pixparse_does(tmp_path):
    """The export's folder is a complete transformers model: AutoProcessor (its image processor
    and tokenizer), the model and generate(), and pipeline('image-text-to-text'), in a process
    where pixparse cannot be imported, give the pixels and texts of pixparse's own eval pipeline
    (resize and white padding, greedy decoding up to the trained length)."""
    import subprocess
    import sys

    from PIL import Image, ImageDraw

    from pixparse.data.transforms import ResizePad
    from pixparse.models.export import save_hf_folder
    from tests.conftest import REPO

    task = TaskReadPretrain(TaskConfig(model_name="cruller_tiny", max_length=40))
    paths, texts = [], ["TOTAL 02.50 RM", "CASH 7.00"]
    for i, (mode, size) in enumerate([("RGB", (600, 850)), ("L", (400, 60))]):  # a page, a line
        page = Image.new(mode, size, "white")
        ImageDraw.Draw(page).text((10, 10), texts[i], fill="black")
        page.save(tmp_path / f"page{i}.png")
        paths.append(str(tmp_path / f"page{i}.png"))
    resize = ResizePad(task.model_cfg.image_encoder.image_size, task.model_cfg.image_encoder.image_fmt)
    batch = {"image": torch.stack([resize(Image.open(p)) for p in paths])}
    # a few steps on the two pages, so that greedy decoding writes varied text, not one token
    start = task.tokenizer.convert_tokens_to_ids(task.prompt)
    rows = [[start] + task.tokenizer(t, add_special_tokens=False).input_ids + [task.tokenizer.eos_token_id]
            for t in texts]
    width = max(map(len, rows))
    ids = torch.tensor([r + [task.tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    labels = ids.masked_fill(ids == task.tokenizer.pad_token_id, -100)
    labels[:, 0] = -100
    train = {**batch, "input_ids": ids, "attention_mask": (labels != -100).long().index_fill(1, torch.tensor([0]), 1),
             "labels": labels}
    torch.manual_seed(0)
    opt = torch.optim.AdamW(task.parameters(), lr=3e-3)
    for _ in range(80):
        opt.zero_grad()
        task(train)["loss"].backward()
        opt.step()
    task.eval()
    save_hf_folder(task.model, task.tokenizer, task.export_info(), str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, f"{REPO}/tests/helpers/hf_alone.py", str(tmp_path / "hf"),
                           str(tmp_path / "out.pt"), *paths], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.load(tmp_path / "out.pt")

    assert torch.equal(theirs["pixel_values"], task.normalize(batch["image"]))
    prompt = [task.tokenizer.convert_tokens_to_ids(task.prompt)]
    ours = [task.decode(ids) for ids in task.generate(batch, [prompt] * 2, task.max_length - 1)]
    assert theirs["texts"] == ours and len(set("".join(ours))) > 5, (theirs["texts"], ours)
    assert theirs["pipeline"] == ours, theirs["pipeline"]
    assert theirs["fields"] == {"company": "ACME", "total": "9.00"}  # field tokens parsed as the eval app does
