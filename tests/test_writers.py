"""Every shard writer round-trips a real folder from ../shared/data."""
import csv
import json
import os
import random
import shutil

import pytest
import webdataset as wds

from pixparse.app.write import write
from pixparse.data.decode import decode_document_page
from pixparse.data.formats import RVL_CDIP_LABELS
from pixparse.data.write import verify_shards, write_shards


def _read_back(paths):
    out = {}
    for s in wds.WebDataset(paths, shardshuffle=False):
        out[s["__key__"]] = (json.loads(s["json"]), s)
    return out


def test_funsd(shared_data, tmp_path):
    root = os.path.join(shared_data, "funsd", "testing_data")
    paths = write("funsd", root, str(tmp_path), samples_per_shard=20, verify=True)
    assert len(paths) == 3
    back = _read_back(paths)
    assert len(back) == 50
    key = sorted(back)[0]
    anno, sample = back[key]
    form = json.load(open(os.path.join(root, "annotations", key + ".json")))["form"]
    assert sorted(anno["pages"][0]["lines"]["text"]) == sorted(e["text"] for e in form if e["text"].strip())
    assert {e["label"] for e in anno["entities"]} <= {"header", "question", "answer", "other"}
    assert sample["png"] == open(os.path.join(root, "images", key + ".png"), "rb").read()


def test_sroie(shared_data, tmp_path):
    root = os.path.join(shared_data, "sroie")
    back = _read_back(write("sroie", root, str(tmp_path), verify=True))
    assert len(back) == 100
    anno, sample = back["000"]
    assert anno["fields"] == json.load(open(os.path.join(root, "key", "000.json")))
    rows = [r.rstrip("\n").split(",", 8)[8] for r in open(os.path.join(root, "box", "000.csv")) if r.strip()]
    assert sorted(anno["pages"][0]["lines"]["text"]) == sorted(t for t in rows if t.strip())
    page = decode_document_page(sample, "first", random.Random(0))
    assert "TAN WOON YANN" in page.text
    assert all(0 <= v <= 1 for box in anno["pages"][0]["lines"]["bbox"] for v in box)


def test_rvl_cdip_labels(shared_data, tmp_path):
    back = _read_back(write("rvl_cdip", os.path.join(shared_data, "rvl_cdip_sample"), str(tmp_path), verify=True))
    assert {k: a["label"] for k, (a, _) in back.items()} == {
        "80035521": "memo", "2024525661": "invoice", "503210033+-0034": "handwritten"}
    assert RVL_CDIP_LABELS[15] == "memo"


def test_docbank_words_and_lines(shared_data, tmp_path):
    root = os.path.join(shared_data, "docbank_samples")
    back = _read_back(write("docbank", root, str(tmp_path), verify=True))
    assert len(back) == 50
    stem = "100.tar_1705.04261.gz_main_11"
    anno, _ = back[stem.replace(".", "_")]
    with open(os.path.join(root, stem + ".txt"), encoding="utf-8") as f:
        tokens = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 10 and r[0].strip()]
    assert anno["words"]["text"] == [r[0] for r in tokens]
    assert anno["words"]["label"] == [r[9] for r in tokens]
    line_words = " ".join(anno["pages"][0]["lines"]["text"]).split()
    assert sorted(line_words) == sorted(r[0] for r in tokens)


def test_docvqa_from_funsd_question_answer_pairs(shared_data, tmp_path):
    """DocVQA's official layout, filled with FUNSD's real question->answer pairs."""
    kv = [json.loads(line) for line in open(os.path.join(shared_data, "funsd_kv_pairs", "funsd_kv_pairs.jsonl"))]
    kv = [r for r in kv if r["split"] == "testing_data"][:40]
    root = tmp_path / "docvqa"
    (root / "documents").mkdir(parents=True)
    data = []
    for i, r in enumerate(kv):
        name = os.path.basename(r["image"])
        shutil.copy(os.path.join(shared_data, "funsd", r["image"]), root / "documents" / name)
        data.append({"questionId": i, "question": r["question_text"], "image": f"documents/{name}",
                     "answers": [r["answer_text"]]})
    (root / "val_v1.0.json").write_text(json.dumps({"dataset_name": "docvqa", "data": data}))
    back = _read_back(write("docvqa", str(root), str(tmp_path / "out"), verify=True))
    assert sum(len(a["qa"]) for a, _ in back.values()) == 40
    assert len(back) == len({r["image"] for r in kv})
    first = next(a for a, _ in back.values())["qa"][0]
    assert first["answers"] and first["question"]


def test_cord_layout_from_sroie_receipts(shared_data, tmp_path):
    """CORD's Hugging Face layout (ground_truth string with gt_parse + valid_line quads), built
    from real SROIE receipts and their key fields."""
    src = os.path.join(shared_data, "sroie")
    root = tmp_path / "cord"
    (root / "json").mkdir(parents=True)
    (root / "image").mkdir()
    for stem in ("000", "001", "002"):
        shutil.copy(os.path.join(src, "img", stem + ".jpg"), root / "image" / (stem + ".jpg"))
        lines = []
        for r in open(os.path.join(src, "box", stem + ".csv")):
            parts = r.rstrip("\n").split(",", 8)
            if len(parts) < 9 or not parts[8].strip():
                continue
            q = [int(v) for v in parts[:8]]
            quad = dict(zip(("x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4"), q))
            lines.append({"words": [{"text": parts[8], "quad": quad}], "category": "menu.nm"})
        gt = {"gt_parse": json.load(open(os.path.join(src, "key", stem + ".json"))), "valid_line": lines}
        (root / "json" / (stem + ".json")).write_text(json.dumps({"ground_truth": json.dumps(gt)}))
    back = _read_back(write("cord", str(root), str(tmp_path / "out"), verify=True))
    anno, _ = back["000"]
    assert anno["fields"]["total"] == "9.00"
    assert "TAN WOON YANN" in anno["pages"][0]["lines"]["text"]


def _sroie_as_cord(src, stem):
    """A real SROIE receipt as CORD's ground truth: its lines' quads and its key fields."""
    lines = []
    for r in open(os.path.join(src, "box", stem + ".csv")):
        parts = r.rstrip("\n").split(",", 8)
        if len(parts) == 9 and parts[8].strip():
            quad = dict(zip(("x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4"), (int(v) for v in parts[:8])))
            lines.append({"words": [{"text": parts[8], "quad": quad}], "category": "menu.nm"})
    return {"gt_parse": json.load(open(os.path.join(src, "key", stem + ".json"))), "valid_line": lines}


def test_hub_schemas_from_datasets_write_what_the_folder_formats_write(shared_data, tmp_path):
    """Local datasets saved in the Hub's CORD-v2, RVL-CDIP and DocVQA schemas (a DatasetDict with
    splits, a ClassLabel, a page's questions in consecutive rows) become the shards the folder
    readers make of the same pages: the same JSON, the same image bytes."""
    datasets = pytest.importorskip("datasets")
    src = os.path.join(shared_data, "sroie")
    stems = ["000", "001", "002"]
    images = [os.path.join(src, "img", s + ".jpg") for s in stems]
    gts = [_sroie_as_cord(src, s) for s in stems]
    cord = datasets.Dataset.from_dict({"image": images, "ground_truth": [json.dumps(g) for g in gts]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "ground_truth": datasets.Value("string")}))
    datasets.DatasetDict({"train": cord, "test": cord.select([0])}).save_to_disk(str(tmp_path / "hf_cord"))
    root = tmp_path / "cord"
    (root / "json").mkdir(parents=True)
    (root / "image").mkdir()
    for stem, path, gt in zip(stems, images, gts):
        shutil.copy(path, root / "image" / (stem + ".jpg"))
        (root / "json" / (stem + ".json")).write_text(json.dumps({"ground_truth": json.dumps(gt)}))
    hub = _read_back(write("hf_cord", str(tmp_path / "hf_cord"), str(tmp_path / "out_hub"), split="train"))
    folder = _read_back(write("cord", str(root), str(tmp_path / "out_folder")))
    assert len(hub) == 3
    for i, stem in enumerate(stems):
        (a, sa), (b, sb) = hub[f"train_{i:06d}"], folder[stem]
        assert a == b and sa["jpg"] == sb["jpg"], stem
    with pytest.raises(ValueError, match=r"no split 'validation'; it has \['test', 'train'\] \(--split\)"):
        write("hf_cord", str(tmp_path / "hf_cord"), str(tmp_path / "x"), split="validation")

    names = list(RVL_CDIP_LABELS)
    rvl = datasets.Dataset.from_dict({"image": images[:2], "label": [15, 11]}, features=datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}))
    rvl.save_to_disk(str(tmp_path / "hf_rvl"))
    back = _read_back(write("hf_rvl_cdip", str(tmp_path / "hf_rvl"), str(tmp_path / "out_rvl"), split="test"))
    assert [back[k][0]["label"] for k in sorted(back)] == ["memo", "invoice"]
    assert {back[k][0]["split"] for k in back} == {"test"}

    rows = {"image": [images[0], images[0], images[1]], "question": ["total?", "date?", "store?"],
            "answers": [["9.00"], ["2018"], ["X"]], "questionId": [7, 8, 9], "docId": [1, 1, 2],
            "ucsf_document_page_no": ["1", "1", "1"]}
    datasets.Dataset.from_dict(rows, features=datasets.Features({
        "image": datasets.Image(), "question": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")), "questionId": datasets.Value("int64"),
        "docId": datasets.Value("int64"), "ucsf_document_page_no": datasets.Value("string")}),
    ).save_to_disk(str(tmp_path / "hf_docvqa"))
    back = _read_back(write("hf_docvqa", str(tmp_path / "hf_docvqa"), str(tmp_path / "out_docvqa")))
    pages = [back[k][0]["qa"] for k in sorted(back)]
    assert pages == [[{"question_id": 7, "question": "total?", "answers": ["9.00"]},
                      {"question_id": 8, "question": "date?", "answers": ["2018"]}],
                     [{"question_id": 9, "question": "store?", "answers": ["X"]}]]


def test_plain_folder_and_byte_limit(shared_data, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for stem in ("000", "001", "002", "003"):
        shutil.copy(os.path.join(shared_data, "sroie", "img", stem + ".jpg"), folder / (stem + ".jpg"))
        (folder / (stem + ".txt")).write_text(f"receipt {stem}\nsecond line\n")
    paths = write("folder", str(folder), str(tmp_path / "out"), max_bytes_per_shard=1, verify=True)
    assert len(paths) == 4  # one sample per shard: each exceeds 1 byte
    back = _read_back(paths)
    assert back["002"][0]["pages"][0]["lines"]["text"] == ["receipt 002", "second line"]


def test_verify_reports_damage(tmp_path):
    paths = write_shards([{"__key__": "a.b", "json": b"{}", "png": b"not a png"}], str(tmp_path / "x-%06d.tar"), 10)
    count, problems = verify_shards(paths)
    assert count == 1 and len(problems) == 1 and "x-000000.tar:a_b" in problems[0]
    with pytest.raises(ValueError, match="no samples"):
        write("folder", str(tmp_path), str(tmp_path / "none"))


def _png_bytes():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), 255).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("case", ["link_outside", "not_an_image", "docvqa_dotdot", "docvqa_absolute"])
def test_write_packs_only_images_inside_the_input_folder(tmp_path, case):
    """Finding 11: a symlink out of the input folder put a secret into a shard (non-images were
    copied verbatim), and docvqa packed '../' and absolute image paths from its JSON."""
    import json

    root, secret = tmp_path / "in", tmp_path / "secret.txt"
    root.mkdir()
    secret.write_text("the password")
    (root / "page.png").write_bytes(_png_bytes())
    (root / "page.txt").write_text("hello")
    if case == "link_outside":
        os.symlink(secret, root / "leak.png")
        (root / "leak.txt").write_text("x")
        fmt, message = "folder", "outside the input folder"
    elif case == "not_an_image":
        (root / "leak.png").write_text("the password")
        (root / "leak.txt").write_text("x")
        fmt, message = "folder", "leak.png is not a readable image"
    else:
        image = "../secret.txt" if case == "docvqa_dotdot" else str(secret)
        (root / "val.json").write_text(json.dumps({"data": [
            {"questionId": 1, "question": "q?", "image": image, "answers": ["a"]}]}))
        fmt, message = "docvqa", "outside the input folder"
    with pytest.raises(ValueError, match=message):
        write(fmt, str(root), str(tmp_path / "out"))
    for shard in (tmp_path / "out").glob("*.tar") if (tmp_path / "out").exists() else []:
        assert b"the password" not in shard.read_bytes()


def test_a_shard_that_fails_verify_is_removed(tmp_path, monkeypatch):
    from pixparse.data.formats import READERS

    monkeypatch.setitem(READERS, "folder", lambda root: iter([{"__key__": "a", "json": b"{}", "png": b"not a png"}]))
    with pytest.raises(ValueError, match="1 damaged sample.* removed"):
        write("folder", str(tmp_path), str(tmp_path / "out"), verify=True)
    assert not list((tmp_path / "out").glob("*.tar"))


def test_write_shows_its_progress_on_a_terminal_only(shared_data, tmp_path):
    """A bar of the samples written when stderr is a terminal; nothing extra in a log or pipe."""
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    root = os.path.join(shared_data, "funsd", "testing_data")
    cmd = [sys.executable, "-m", "pixparse.app.write", "funsd", root, str(tmp_path / "a"), "--max_samples", "3"]
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 wide
    shown = b""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=secondary)
        os.close(secondary)
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the child closed the terminal: all is read
                break
            if not chunk:
                break
            shown += chunk
        proc.wait(timeout=120)
    finally:
        os.close(primary)
    assert proc.returncode == 0 and b"write funsd" in shown and b"/3 [" in shown, shown
    piped = subprocess.run([*cmd[:-3], str(tmp_path / "b"), "--max_samples", "3"], capture_output=True, text=True,
                           timeout=120)
    assert piped.returncode == 0 and "write funsd" not in piped.stderr, piped.stderr
