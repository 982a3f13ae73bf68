import io
import json
import os
import random

import pytest
import torch
import webdataset as wds
from PIL import Image

from pixparse.data.config import DataLoaderConfig
from pixparse.data.decode import decode_document_page
from pixparse.data.loader import LAST_SKIPPED_KEY, SKIPPED_KEY, check_shards_cover, create_loader, expand_source
from pixparse.data.formats import read_funsd
from pixparse.data.write import write_shards
from pixparse.tasks.config import TaskConfig
from pixparse.tasks.pretrain import TaskReadPretrain


def _raw_samples(pattern):
    return list(wds.WebDataset(expand_source(pattern), shardshuffle=False))


def _key_of(sample, rng):
    return {"key": sample["__key__"]}


def _collate_keys(samples):
    return {"keys": [s["key"] for s in samples]}


def _cfg(source, **kw):
    return DataLoaderConfig(source=source, num_samples=kw.pop("num_samples", 32), **kw)


def _keys(source, rank, world_size, num_workers, interval=0, seed=0, num_batches=16):
    cfg = _cfg(source, batch_size=1, num_workers=num_workers, shuffle_buffer=0)
    loader = create_loader(cfg, _key_of, _collate_keys, num_batches, rank, world_size, seed)
    loader.set_interval(interval)
    return [k for b in loader for k in b["keys"]]


def test_synth_pages_decode_to_their_lines(synth_shards):
    samples = _raw_samples(synth_shards)
    assert len(samples) == 32
    assert any("tif" in s for s in samples), "expected some multi-page TIFF documents"
    for s in samples[:6]:
        anno = json.loads(s["json"])
        page = decode_document_page(s, "first", random.Random(0))
        assert page.text == "\n".join(anno["pages"][0]["lines"]["text"])
        assert page.image.size == (240, 320)


def test_random_page_choice_reaches_every_page(synth_shards):
    doc = next(s for s in _raw_samples(synth_shards) if "tif" in s)
    pages = {decode_document_page(doc, "random", random.Random(i)).page_index for i in range(20)}
    assert pages == {0, 1}


def test_ranks_and_workers_read_disjoint_complete_shards(synth_shards):
    """2 ranks x 2 workers, 4 shards: one pass reads every sample exactly once."""
    keys0 = _keys(synth_shards, 0, 2, 2)
    keys1 = _keys(synth_shards, 1, 2, 2)
    all_keys = {s["__key__"] for s in _raw_samples(synth_shards)}
    assert len(keys0) == len(keys1) == 16
    assert not set(keys0) & set(keys1)
    assert set(keys0) | set(keys1) == all_keys


def test_order_fixed_by_seed_and_interval(synth_shards):
    a = _keys(synth_shards, 0, 1, 2, interval=0, num_batches=32)
    assert a == _keys(synth_shards, 0, 1, 2, interval=0, num_batches=32)
    assert a != _keys(synth_shards, 0, 1, 2, interval=1, num_batches=32)
    assert sorted(a) == sorted(_keys(synth_shards, 0, 1, 2, interval=1, num_batches=32))


def test_too_few_shards_is_an_error_not_a_hang(synth_shards):
    with pytest.raises(ValueError, match="4 shard.*--data.train.resampled true"):
        check_shards_cover(_cfg(synth_shards, num_workers=4), world_size=2)
    check_shards_cover(_cfg(synth_shards, num_workers=4, resampled=True), world_size=2)


@pytest.fixture(scope="module")
def tiny_task():
    return TaskReadPretrain(TaskConfig(model_name="cruller_tiny"))


def test_batches_pad_dynamically_and_mask_prompt_and_padding(synth_shards, tiny_task):
    cfg = _cfg(synth_shards, batch_size=4, num_workers=0)
    loader = create_loader(cfg, tiny_task.preprocess(cfg), tiny_task.collate(cfg), 2, 0, 1, 0)
    loader.set_interval(0)
    batch = next(iter(loader))
    h, w = tiny_task.model_cfg.image_encoder.image_size
    assert batch["image"].shape == (4, 1, h, w) and batch["image"].dtype == torch.uint8
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape[1] % 8 == 0 and ids.shape[1] <= tiny_task.max_length + 7
    prompt = tiny_task.tokenizer.convert_tokens_to_ids("<s_pretrain>")
    assert (ids[:, 0] == prompt).all() and (labels[:, 0] == -100).all()
    assert (labels[mask == 0] == -100).all()
    assert (labels[:, 1:][mask[:, 1:] == 1] == ids[:, 1:][mask[:, 1:] == 1]).all()
    eos_positions = mask.sum(1) - 1
    assert (ids[torch.arange(4), eos_positions] == tiny_task.tokenizer.eos_token_id).all()
    assert batch[SKIPPED_KEY] == {} and batch[LAST_SKIPPED_KEY] == ""


def _png(color=200):
    buf = io.BytesIO()
    Image.new("L", (64, 80), color).save(buf, format="PNG")
    return buf.getvalue()


def test_annotations_json_reads_and_orjson_refuses_still_decode():
    """NaN / Infinity boxes and integers past 64 bits are valid to Python's json (and to the
    writers that made them): such a page decodes, its text whole; broken JSON is still bad_json."""
    from pixparse.data.decode import SampleError

    anno = b'{"pages": [{"lines": {"text": ["total 12.00", "net"], "bbox": [[NaN, 0, 1, Infinity], [0, 0, 1, 1]]}}], ' \
           b'"doc_id": 123456789012345678901234567890}'
    page = decode_document_page({"json": anno, "png": _png()}, "first", random.Random(0))
    assert page.text == "total 12.00\nnet" and page.anno["doc_id"] == 123456789012345678901234567890
    with pytest.raises(SampleError) as e:
        decode_document_page({"json": b'{"pages": [', "png": _png()}, "first", random.Random(0))
    assert e.value.reason == "bad_json"


def test_bad_samples_are_skipped_and_counted(tmp_path, tiny_task):
    good = {"json": json.dumps({"pages": [{"lines": {"text": ["hello"], "bbox": [[0, 0, 1, 1]]}}]}).encode(),
            "png": _png()}
    samples = [
        {"__key__": "good0", **good},
        {"__key__": "badjson", "json": b"{not json", "png": _png()},
        {"__key__": "badimage", "json": good["json"], "png": b"\x89PNG garbage"},
        {"__key__": "noimage", "json": good["json"]},
        {"__key__": "empty", "json": json.dumps({"pages": [{"lines": {"text": ["  "]}}]}).encode(), "png": _png()},
        {"__key__": "oldformat", "json": json.dumps({"pages": [{"text": ["old style"]}]}).encode(), "png": _png()},
        {"__key__": "good1", **good},
    ]
    path = write_shards(samples, str(tmp_path / "mixed-%06d.tar"), 100)[0]
    truncated = tmp_path / "mixed-000001.tar"
    data = open(path, "rb").read()
    truncated.write_bytes(data[: len(data) // 2 + 100])
    cfg = _cfg(str(tmp_path / "mixed-{000000..000001}.tar"), batch_size=1, num_workers=0, shuffle_buffer=0)
    loader = create_loader(cfg, tiny_task.preprocess(cfg), tiny_task.collate(cfg), 3, 0, 1, 0)
    loader.set_interval(0)
    skipped = {}
    batches = list(loader)
    for b in batches:
        for k, v in b[SKIPPED_KEY].items():
            skipped[k] = skipped.get(k, 0) + v
    assert len(batches) == 3
    assert skipped["bad_json"] >= 1 and skipped["bad_image"] >= 1
    assert skipped["missing_image"] >= 1 and skipped["empty_page"] >= 1
    last = [b[LAST_SKIPPED_KEY] for b in batches if b[LAST_SKIPPED_KEY]]
    assert last and "mixed-000000.tar:empty (empty_page): " in last[0]  # shard, key, reason


def test_truncated_tar_is_counted(tmp_path, tiny_task):
    good = {"json": json.dumps({"pages": [{"lines": {"text": ["hello"]}}]}).encode(), "png": _png()}
    path = write_shards(({"__key__": f"k{i}", **good} for i in range(6)), str(tmp_path / "t-%06d.tar"), 100)[0]
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * 0.6)])
    cfg = _cfg(path, batch_size=1, num_workers=0, shuffle_buffer=0)
    loader = create_loader(cfg, tiny_task.preprocess(cfg), tiny_task.collate(cfg), 8, 0, 1, 0)
    loader.set_interval(0)
    skipped = {}
    for b in loader:
        for k, v in b[SKIPPED_KEY].items():
            skipped[k] = skipped.get(k, 0) + v
    # Depending on where the cut falls, tarfile raises (bad_tar) or the stream just ends
    # and the cut sample arrives incomplete; either way it is skipped and counted.
    assert sum(skipped.get(k, 0) for k in ("bad_tar", "missing_image", "missing_json")) >= 1


def test_real_funsd_pages_convert_and_load(shared_data, tmp_path, tiny_task):
    root = os.path.join(shared_data, "funsd", "testing_data")
    samples = list(read_funsd(root))
    assert len(samples) == 50
    write_shards(iter(samples), str(tmp_path / "funsd-%06d.tar"), 25)
    source = str(tmp_path / "funsd-{000000..000001}.tar")
    first = _raw_samples(source)[0]
    page = decode_document_page(first, "first", random.Random(0))
    form = json.load(open(os.path.join(root, "annotations", first["__key__"] + ".json")))["form"]
    assert set(page.text.split("\n")) == {e["text"] for e in form if e["text"].strip()}
    cfg = _cfg(source, batch_size=2, num_workers=2)
    loader = create_loader(cfg, tiny_task.preprocess(cfg), tiny_task.collate(cfg), 4, 0, 1, 0)
    loader.set_interval(0)
    batches = list(loader)
    assert len(batches) == 4 and all(b[SKIPPED_KEY] == {} for b in batches)
    out = tiny_task({k: v for k, v in batches[0].items() if k not in (SKIPPED_KEY, LAST_SKIPPED_KEY)})
    assert torch.isfinite(out["loss"])


def test_pdf_pages_render_at_target_size_and_match_json(tmp_path, tiny_task):
    """A two-page PDF (IDL/PDFA style): the chosen page is rendered to fit the encoder size."""
    pages = [Image.new("L", (850, 1100), 255), Image.new("L", (850, 1100), 0)]
    buf = io.BytesIO()
    pages[0].save(buf, format="PDF", save_all=True, append_images=pages[1:], resolution=100)
    anno = {"pages": [{"lines": {"text": ["white page"]}}, {"lines": {"text": ["black page"]}}]}
    sample = {"__key__": "doc", "json": json.dumps(anno).encode(), "pdf": buf.getvalue()}
    seen = {}
    for i in range(12):
        page = decode_document_page(sample, "random", random.Random(i), target_size=(128, 96), grayscale=True)
        seen[page.text] = page.image
    assert set(seen) == {"white page", "black page"}
    white, black = seen["white page"], seen["black page"]
    # Scanned pages (one JPEG per page, as PIL writes them) are decoded from the embedded JPEG at
    # the smallest DCT scale that still covers the target: between 1x and 2x of it.
    assert 0.98 <= max(white.size[0] / 96, white.size[1] / 128) < 2.0
    assert white.getextrema()[0] > 200 and black.getextrema()[1] < 50
    out = tiny_task.preprocess(_cfg("x.tar"))(sample, random.Random(0))[0]
    assert out["image"].shape == (1, 128, 96)


def test_image_text_pairs(tiny_task):
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (10, 20, 30)).save(buf, format="JPEG")
    sample = {"__key__": "pair", "jpg": buf.getvalue(), "txt": "a red bicycle\n".encode()}
    page = decode_document_page(sample, "random", random.Random(0))
    assert page.text == "a red bicycle"
    ids = tiny_task.preprocess(_cfg("x.tar"))(sample, random.Random(0))[0]["input_ids"]
    assert tiny_task.tokenizer.decode(ids[1:-1]) == "a red bicycle"


def test_doc_aug_is_random_per_seed_and_eval_is_not(synth_shards):
    from pixparse.data.transforms import DocAugment, ResizePad

    sample = _raw_samples(synth_shards)[0]
    page = decode_document_page(sample, "first", random.Random(0)).image
    aug = ResizePad((128, 96), "L", augment=DocAugment(p=1.0))
    plain = ResizePad((128, 96), "L")
    a, b = aug(page.copy(), random.Random(1)), aug(page.copy(), random.Random(1))
    c = aug(page.copy(), random.Random(2))
    assert a.shape == (1, 128, 96) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(plain(page.copy(), random.Random(1)), plain(page.copy(), random.Random(2)))
    assert not torch.equal(a, plain(page.copy()))


def test_weighted_sources_in_resampled_mode(tmp_path):
    good = {"json": json.dumps({"pages": [{"lines": {"text": ["x"]}}]}).encode(), "png": _png()}
    for name in ("a", "b"):
        write_shards(({"__key__": f"{name}{i}", **good} for i in range(8)), str(tmp_path / f"{name}-%06d.tar"), 4)
    source = f"{tmp_path}/a-{{000000..000001}}.tar::{tmp_path}/b-{{000000..000001}}.tar"
    cfg = _cfg(source, batch_size=1, num_workers=0, shuffle_buffer=0, resampled=True, source_weights=[0.9, 0.1])
    loader = create_loader(cfg, _key_of, _collate_keys, 400, 0, 1, 0)
    loader.set_interval(0)
    keys = [k for b in loader for k in b["keys"]]
    share_a = sum(k.startswith("a") for k in keys) / len(keys)
    assert 0.8 < share_a < 0.97
    with pytest.raises(ValueError, match="needs --data.train.resampled true"):
        _cfg(source, source_weights=[1, 1])
    with pytest.raises(ValueError, match="must be 2 non-negative"):
        _cfg(source, resampled=True, source_weights=[1.0])


def test_pipe_sources(synth_shards):
    pattern = synth_shards.replace("synth-{000000..000003}.tar", "synth-{000000..000001}.tar")
    urls = expand_source(pattern)
    piped = "::".join(f"pipe:cat {u}" for u in urls)
    keys = _keys(piped, 0, 1, 1, num_batches=16)
    assert sorted(keys) == sorted(s["__key__"] for s in _raw_samples(pattern))


def test_http_shards_stream_as_local_ones_do(synth_shards):
    """Shards served over HTTP (as the Hub serves pixparse/pdfa-eng-wds and idl-wds, through
    webdataset's curl) give the samples the local files give; here from a server on 127.0.0.1."""
    import functools
    import http.server
    import os
    import threading

    folder = os.path.dirname(synth_shards)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pattern = synth_shards.replace("synth-{000000..000003}.tar", "synth-{000000..000001}.tar")
        url = f"http://127.0.0.1:{server.server_address[1]}/synth-{{000000..000001}}.tar"
        keys = _keys(url, 0, 1, 1, num_batches=16)
        assert sorted(keys) == sorted(s["__key__"] for s in _raw_samples(pattern))
    finally:
        server.shutdown()


def test_vector_pdf_is_rendered_to_fit():
    """A born-digital page (vector content, no scan): PDFium renders it at the fitting scale."""
    content = b"0 0 0 rg 0 0 100 100 re f"
    pdf = (b"%PDF-1.4\n1 0 obj <</Type/Catalog/Pages 2 0 R>> endobj\n"
           b"2 0 obj <</Type/Pages/Kids[3 0 R]/Count 1>> endobj\n"
           b"3 0 obj <</Type/Page/Parent 2 0 R/MediaBox[0 0 200 100]/Contents 4 0 R>> endobj\n"
           + f"4 0 obj <</Length {len(content)}>> stream\n".encode() + content + b"\nendstream endobj\n"
           b"trailer <</Root 1 0 R>>\n%%EOF\n")
    sample = {"__key__": "v", "json": json.dumps({"pages": [{"lines": {"text": ["box"]}}]}).encode(), "pdf": pdf}
    page = decode_document_page(sample, "first", random.Random(0), target_size=(128, 96), grayscale=True)
    assert page.image.size == (96, 48)
    assert page.image.crop((0, 0, 40, 48)).getextrema()[1] < 60  # left half black
    assert page.image.crop((56, 0, 96, 48)).getextrema()[0] > 200  # right half white


def test_all_pages_mode_yields_every_page_with_text(synth_shards, tiny_task):
    docs = _raw_samples(synth_shards)
    expected = sum(len(json.loads(s["json"])["pages"]) for s in docs)
    assert expected > len(docs)  # some two-page TIFFs
    cfg = _cfg(synth_shards, batch_size=1, num_workers=0, shuffle_buffer=0, page_sampling="all")
    loader = create_loader(cfg, tiny_task.preprocess(cfg), tiny_task.collate(cfg), expected, 0, 1, 0)
    loader.set_interval(0)
    texts = [tiny_task.tokenizer.decode(b["input_ids"][0][b["attention_mask"][0] == 1][1:-1]) for b in loader]
    want = ["\n".join(p["lines"]["text"]) for s in docs for p in json.loads(s["json"])["pages"]]
    assert sorted(t[:40] for t in texts) == sorted(w[:40] for w in want)  # targets are truncated


def test_resumed_loader_continues_with_the_same_batches(synth_shards, tiny_task):
    cfg = _cfg(synth_shards, batch_size=2, num_workers=2, shuffle_buffer=8)
    loader = create_loader(cfg, tiny_task.preprocess(cfg), tiny_task.collate(cfg), 10, 0, 2, 7)
    loader.set_interval(3)
    full = [b["input_ids"] for b in loader]
    resumed = [b["input_ids"] for b in loader.iter_from(6)]
    assert len(resumed) == 4 and all(torch.equal(a, b) for a, b in zip(full[6:], resumed))


def test_missing_local_shards_fail_early(tmp_path):
    with pytest.raises(ValueError, match="2 of 2 shard.*do not exist"):
        check_shards_cover(_cfg(str(tmp_path / "nope-{0..1}.tar"), num_workers=1), world_size=1)


def test_unreadable_pipe_shards_raise_instead_of_hanging(tiny_task):
    cfg = _cfg("pipe:false::pipe:false", batch_size=1, num_workers=0)
    loader = create_loader(cfg, tiny_task.preprocess(cfg), tiny_task.collate(cfg), 2, 0, 1, 0)
    loader.set_interval(0)
    with pytest.raises(RuntimeError, match="4 shard reads in a row gave no sample; latest problem: pipe:false"):
        next(iter(loader))


def _bad_json_shard(tmp_path, n=80):
    buf = io.BytesIO()
    Image.new("L", (64, 80), 255).save(buf, format="PNG")
    samples = [{"__key__": f"k{i:03d}", "json": b"{broken", "png": buf.getvalue()} for i in range(n)]
    return write_shards(iter(samples), str(tmp_path / "bad-%06d.tar"), n)[0]


def test_all_bad_samples_stop_the_loader_instead_of_hanging(tmp_path, tiny_task):
    """Every JSON broken while the tar reads fine: no batch is ever made, so the engine's skip
    check would never run; the worker stops with the shard:key and reason of the latest."""
    shard = _bad_json_shard(tmp_path)
    cfg = _cfg(shard, batch_size=2, num_workers=0)
    loader = create_loader(cfg, tiny_task.preprocess(cfg), tiny_task.collate(cfg), 4, 0, 1, 0)
    loader.set_interval(0)
    with pytest.raises(RuntimeError, match=r"last 64 samples read were all unusable.*bad-000000.tar:k\d+ \(bad_json\)"):
        next(iter(loader))


def test_a_bug_in_preprocessing_is_not_counted_as_bad_data(synth_shards):
    def buggy(sample, rng):
        return sample["json"].no_such_method()  # AttributeError: our bug, not the data's

    cfg = _cfg(synth_shards, batch_size=2, num_workers=0)
    loader = create_loader(cfg, buggy, _collate_keys, 2, 0, 1, 0)
    loader.set_interval(0)
    with pytest.raises(AttributeError):
        next(iter(loader))


@pytest.mark.parametrize("cut", [0.45, 0.65])
def test_a_truncated_shard_gives_its_intact_samples_and_counts_the_rest(synth_shards, tiny_task, tmp_path, cut):
    """One shard cut mid-way: the samples before the cut train, the damage is counted as bad_tar
    naming the shard, and the loader keeps going (it used to stop with a false 'no sample read')."""
    shard = expand_source(synth_shards)[0]
    data = open(shard, "rb").read()
    cut_path = tmp_path / "cut-000000.tar"
    cut_path.write_bytes(data[: int(len(data) * cut)])
    cfg = _cfg(str(cut_path), batch_size=1, num_workers=0, shuffle_buffer=0)
    loader = create_loader(cfg, tiny_task.preprocess(cfg), tiny_task.collate(cfg), 6, 0, 1, 0)
    loader.set_interval(0)
    batches = list(loader)
    assert len(batches) == 6  # more than the intact samples of one pass: passes repeat
    skipped = sum(b[SKIPPED_KEY].get("bad_tar", 0) for b in batches)
    assert skipped >= 1 and any(str(cut_path) in b[LAST_SKIPPED_KEY] for b in batches)


def test_a_shuffle_buffer_over_one_sample_shards_is_not_taken_for_unreadable_shards(tmp_path, tiny_task):
    """The buffer pulls many shards before the first sample comes out: those are not failed reads."""
    buf = io.BytesIO()
    Image.new("L", (64, 80), 255).save(buf, format="PNG")
    good = json.dumps({"pages": [{"lines": {"text": ["fine text"]}}]}).encode()
    for i in range(4):
        write_shards(iter([{"__key__": f"k{i}", "json": good, "png": buf.getvalue()}]),
                     str(tmp_path / f"one{i}-%06d.tar"), 1)
    source = str(tmp_path / "one{0..3}-000000.tar")
    cfg = _cfg(source, batch_size=2, num_workers=0, shuffle_buffer=256)
    loader = create_loader(cfg, tiny_task.preprocess(cfg), tiny_task.collate(cfg), 3, 0, 1, 0)
    loader.set_interval(0)
    assert len(list(loader)) == 3


def _bomb_png(width=50_000, height=50_000):
    """A valid PNG header claiming width x height pixels (a few hundred bytes on disk)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_every_kind_of_corrupt_data_is_skipped_and_counted_by_reason(tmp_path, tiny_task):
    """Garbled image, invalid JSON, missing image, missing JSON, empty text, a 50,000 x 50,000 px
    image header, a 5 MB target text, a zero-byte shard and a shard that vanishes after the run
    started: each skipped and counted under its reason with shard:key, the good samples all read."""
    text = json.dumps({"pages": [{"lines": {"text": ["hello"]}}]}).encode()
    good = [{"__key__": f"good{i}", "json": text, "png": _png()} for i in range(4)]
    bad = [
        {"__key__": "garbled", "json": text, "png": b"\x89PNG\r\n\x1a\n" + os.urandom(200)},
        {"__key__": "badjson", "json": b'{"pages": [', "png": _png()},
        {"__key__": "noimage", "json": text},
        {"__key__": "nojson", "png": _png()},
        {"__key__": "emptytext", "json": json.dumps({"pages": [{"lines": {"text": [""]}}]}).encode(), "png": _png()},
        {"__key__": "bomb", "json": text, "png": _bomb_png()},
        {"__key__": "huge", "json": json.dumps({"pages": [{"lines": {"text": ["x" * 5_000_000]}}]}).encode(),
         "png": _png()},
    ]
    write_shards(iter(good[:2] + bad + good[2:]), str(tmp_path / "c-%06d.tar"), 100)
    (tmp_path / "c-000001.tar").write_bytes(b"")  # zero bytes
    import shutil

    shutil.copy(tmp_path / "c-000000.tar", tmp_path / "c-000002.tar")
    cfg = _cfg(str(tmp_path / "c-{000000..000002}.tar"), batch_size=1, num_workers=0, shuffle_buffer=0,
               num_samples=8)
    loader = create_loader(cfg, tiny_task.preprocess(cfg), tiny_task.collate(cfg), 8, 0, 1, 0)
    loader.set_interval(0)
    os.remove(tmp_path / "c-000002.tar")  # vanishes after the loader was made (before it is read)
    skipped, last, keys = {}, [], 0
    for b in loader:
        keys += b["image"].shape[0]
        for k, v in b[SKIPPED_KEY].items():
            skipped[k] = skipped.get(k, 0) + v
        last.append(b[LAST_SKIPPED_KEY])
    assert keys == 8  # the good samples of shard 0, read again in the next pass
    for reason in ("bad_image", "bad_json", "missing_image", "missing_json", "empty_page", "target_too_long",
                   "bad_tar"):
        assert skipped.get(reason, 0) >= 1, (reason, skipped)
    assert skipped["bad_image"] >= 2  # garbled and the bomb
    joined = "\n".join(last)
    assert "c-000000.tar:" in joined


def test_decompression_bomb_and_huge_text_reasons_name_the_cause(tiny_task):
    from pixparse.data.config import DataEvalConfig

    prep = tiny_task.preprocess(DataEvalConfig(source="x.tar"))
    text = json.dumps({"pages": [{"lines": {"text": ["hello"]}}]}).encode()
    from pixparse.data.decode import SampleError

    with pytest.raises(SampleError, match="bad_image.*(decompression bomb|exceeds limit)"):
        prep({"__key__": "bomb", "json": text, "png": _bomb_png()}, random.Random(0))
    huge = json.dumps({"pages": [{"lines": {"text": ["x" * 5_000_000]}}]}).encode()
    with pytest.raises(SampleError, match="target_too_long.*5000000 characters"):
        prep({"__key__": "huge", "json": huge, "png": _png()}, random.Random(0))


def test_exact_decode_keeps_small_text_sharper_than_fast(shared_data):
    """--data.*.decode exact (full JPEG decode, bicubic all the way) is closer to a full decode +
    Lanczos fit than fast (DCT-scaled decode, box reduce first) on real receipts, at the model's size."""
    import numpy as np

    from pixparse.data.config import DataEvalConfig
    from pixparse.data.decode import fit_size
    from pixparse.tasks.config import TaskConfig
    from pixparse.tasks.registry import create_task

    task = create_task(TaskConfig(model_name="cruller_tiny"))
    path = f"{shared_data}/sroie/img/000.jpg"
    data = open(path, "rb").read()
    sample = {"__key__": "000", "jpg": data,
              "json": json.dumps({"pages": [{"lines": {"text": ["x"]}}]}).encode()}
    h, w = task.model_cfg.image_encoder.image_size
    full = Image.open(path).convert("L")
    fw, fh = fit_size(full.size, (h, w))
    reference = np.asarray(full.resize((fw, fh), Image.Resampling.LANCZOS), dtype=np.float64)

    def psnr(decode):
        out = task.preprocess(DataEvalConfig(source="x.tar", decode=decode))(sample, random.Random(0))[0]["image"]
        got = out[0, :fh, :fw].double().numpy()
        return 10 * np.log10(255**2 / np.mean((got - reference) ** 2))

    fast, exact = psnr("fast"), psnr("exact")
    assert exact > fast + 2.0, (fast, exact)


def test_deeply_nested_json_is_a_counted_skip_not_a_crash(tmp_path, tiny_task):
    """Finding 6: a 100000-deep array (json's fallback recurses) and a 1000-deep list in `text`
    (orjson accepts it) raised RecursionError out of the worker; the fine-tune scan likewise."""
    from pixparse.tasks.fields import read_field_keys

    text = json.dumps({"pages": [{"lines": {"text": ["hello"]}}], "fields": {"total": "1.00"}}).encode()
    deep_array = b'{"pages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep_text = b'{"pages": [{"lines": {"text": [' + b"[" * 1000 + b"]" * 1000 + b"]}}]}"
    deep_fields = b'{"pages": [{"lines": {"text": ["x"]}}], "fields": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001
    samples = [{"__key__": "good0", "json": text, "png": _png()},
               {"__key__": "deeparray", "json": deep_array, "png": _png()},
               {"__key__": "deeptext", "json": deep_text, "png": _png()},
               {"__key__": "deepfields", "json": deep_fields, "png": _png()},
               {"__key__": "good1", "json": text, "png": _png()}]
    write_shards(iter(samples), str(tmp_path / "d-%06d.tar"), 100)
    cfg = _cfg(str(tmp_path / "d-000000.tar"), batch_size=1, num_workers=0, shuffle_buffer=0, num_samples=3)
    skipped, _ = _read_skips(create_loader(cfg, tiny_task.preprocess(cfg), tiny_task.collate(cfg), 3, 0, 1, 0))
    assert skipped.get("nested_too_deep", 0) >= 2, skipped
    assert read_field_keys(str(tmp_path / "d-000000.tar")) == {"total"}


def test_per_sample_memory_is_capped_before_decoding(tmp_path, tiny_task):
    """Finding 13: a 1.5 MB .tar.gz reached 3.85 GB and a 580 KB PNG 2.1 GB before being skipped.
    A gzip-compressed shard whose member is 64 MiB of zeros (64 KB compressed) and a PNG whose
    header says 9000 x 9000 are skipped by their size, counted, the good samples read."""
    import gzip
    import io
    import tarfile

    text = json.dumps({"pages": [{"lines": {"text": ["hello"]}}]}).encode()
    big_png = _bomb_png(9000, 9000)
    members = [("good0.json", text), ("good0.png", _png()), ("big.json", text), ("big.png", b"\0" * (64 << 20)),
               ("wide.json", text), ("wide.png", big_png), ("good1.json", text), ("good1.png", _png())]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "z-000000.tar.gz").write_bytes(gzip.compress(raw.getvalue(), compresslevel=1))
    cfg = _cfg(str(tmp_path / "z-000000.tar.gz"), batch_size=1, num_workers=0, shuffle_buffer=0, num_samples=2,
               max_sample_bytes=32 << 20, max_image_pixels=50_000_000)
    skipped, last = _read_skips(create_loader(cfg, tiny_task.preprocess(cfg), tiny_task.collate(cfg), 2, 0, 1, 0))
    assert skipped.get("sample_too_large") == 1 and skipped.get("image_too_large") == 1, skipped
    assert "9000x9000 pixels" in " ".join(last) or "over --data.*.max_sample_bytes" in " ".join(last)


def _read_skips(loader):
    """Read interval 0 of `loader`: ({reason: count} of skipped samples, each batch's latest skip)."""
    loader.set_interval(0)
    skipped, last = {}, []
    for b in loader:
        for k, v in b[SKIPPED_KEY].items():
            skipped[k] = skipped.get(k, 0) + v
        last.append(b[LAST_SKIPPED_KEY])
    return skipped, last
