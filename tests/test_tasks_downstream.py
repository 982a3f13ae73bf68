"""CORD, DocVQA and RVL-CDIP tasks on the shared task base: targets, prompts, parsing, metrics."""
import json
import random

import pytest
import torch

from pixparse.data.write import write_shards
from pixparse.tasks.config import TaskConfig
from pixparse.tasks.metrics import anls, anls_one
from pixparse.tasks.registry import create_task


def _png():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (96, 128), 255).save(buf, format="PNG")
    return buf.getvalue()


def _shard(tmp_path, annos, name="d"):
    samples = [{"__key__": f"k{i}", "json": json.dumps(a).encode(), "png": _png()} for i, a in enumerate(annos)]
    return write_shards(iter(samples), str(tmp_path / f"{name}-%06d.tar"), 100)[0]


PAGE = {"lines": {"text": ["some text"]}}


def test_anls_by_hand():
    assert anls_one("New  York ", ["new york"]) == 1.0  # case and whitespace normalized
    assert anls_one("new yrok", ["new york"]) == pytest.approx(1 - 2 / 8)
    assert anls_one("abc", ["xyz"]) == 0.0  # NL 1 >= 0.5
    assert anls_one("abcd", ["abxy"]) == 0.0  # NL exactly 0.5 counts as 0
    assert anls_one("10", ["ten", "10"]) == 1.0  # max over the references
    assert anls_one("", ["x"]) == 0.0 and anls_one("Zürich", ["zurich"]) == pytest.approx(1 - 1 / 6)
    assert anls(["a", "b"], [["a"], ["c"]]) == 0.5


def test_docvqa_prompt_holds_the_question_and_the_loss_only_the_answer(tmp_path):
    from pixparse.data.config import DataEvalConfig

    anno = {"pages": [PAGE], "qa": [{"question": "What is the total?", "answers": ["9.00", "9"]},
                                    {"question": "Date?", "answers": ["1/2/2020"]}]}
    shard = _shard(tmp_path, [anno])
    task = create_task(TaskConfig(name="finetune_docvqa", model_name="cruller_tiny"))
    cfg = DataEvalConfig(source=shard)
    import webdataset as wds

    sample = next(iter(wds.tarfile_samples([{"url": shard}])))
    items = task.preprocess(cfg, with_meta=True)(sample, random.Random(0))
    assert len(items) == 2 and items[0]["meta"]["reference"] == ["9.00", "9"]
    batch = task.collate(cfg)(items)
    tok = task.tokenizer
    first = batch["input_ids"][0]
    plen = int(batch["prompt_length"][0])
    assert tok.decode(first[:plen]) == "<s_docvqa><s_question>What is the total?</s_question><s_answer>"
    target = first[plen: int(batch["attention_mask"][0].sum())]
    assert tok.decode(target, skip_special_tokens=False).startswith("9.00</s_answer>")
    assert (batch["labels"][0, :plen] == -100).all() and (batch["labels"][0, plen:plen + 4] != -100).all()
    assert task.postprocess("9.00</s_answer>junk") == "9.00"
    assert task.score(["9"], [["9.00", "9"]]) == {"anls": 1.0}


def test_rvlcdip_classes_come_from_the_data_and_parse_back(tmp_path):
    annos = [{"pages": [PAGE], "label": label} for label in ("memo", "scientific report", "memo")]
    shard = _shard(tmp_path, annos)
    task = create_task(TaskConfig(name="finetune_rvlcdip", model_name="cruller_tiny"), train_source=shard)
    assert task.labels == {"memo", "scientific report"}
    vocab = task.tokenizer.get_vocab()
    assert "<class_memo/>" in vocab and "<class_scientific_report/>" in vocab and "<class_invoice/>" not in vocab
    ids = task.tokenizer("<class_scientific_report/>", add_special_tokens=False).input_ids
    assert len(ids) == 1  # one token to generate
    assert task.postprocess(task.decode(ids)) == "scientific report"
    assert task.score(["memo", "memo"], ["memo", "scientific report"]) == {"accuracy": 0.5}
    assert task.export_info()["labels"] == ["memo", "scientific report"]


def test_rvlcdip_task_on_real_pages(shared_data, tmp_path):
    from pixparse.app.write import write

    paths = write("rvl_cdip", f"{shared_data}/rvl_cdip_sample", str(tmp_path))
    task = create_task(TaskConfig(name="finetune_rvlcdip", model_name="cruller_tiny"), train_source=paths[0])
    assert len(task.labels) == 3
    # RVL-CDIP pages carry no text lines: a classification sample needs none (reading would)
    import webdataset as wds

    from pixparse.data.config import DataEvalConfig

    prep = task.preprocess(DataEvalConfig(source=paths[0]), with_meta=True)
    items = [it for s in wds.tarfile_samples([{"url": paths[0]}]) for it in prep(s, random.Random(0))]
    assert sorted(it["meta"]["reference"] for it in items) == ["handwritten", "invoice", "memo"]


def test_cord_nested_fields_become_tokens(tmp_path):
    fields = {"menu": [{"nm": "tea", "price": "3"}, {"nm": "cake", "price": "6"}], "total": {"total_price": "9"}}
    shard = _shard(tmp_path, [{"pages": [PAGE], "fields": fields}])
    task = create_task(TaskConfig(name="finetune_cord", model_name="cruller_tiny", max_length=256),
                       train_source=shard)
    assert task.field_keys == {"menu", "nm", "price", "total", "total_price"}
    text = "<s_menu><s_nm>tea</s_nm><s_price>3</s_price><sep/><s_nm>cake</s_nm><s_price>6</s_price></s_menu>" \
           "<s_total><s_total_price>9</s_total_price></s_total>"
    assert task.postprocess(text) == fields
    assert task.score([fields], [fields]) == {"field_f1": 1.0, "ted_accuracy": 1.0}


def test_generation_groups_prompts_of_different_lengths():
    task = create_task(TaskConfig(name="finetune_docvqa", model_name="cruller_tiny")).eval()
    image = torch.randint(0, 256, (3, 1, 128, 96), dtype=torch.uint8)
    tok = task.tokenizer
    prompts = [tok(f"<s_docvqa><s_question>{q}</s_question><s_answer>", add_special_tokens=False).input_ids
               for q in ("a?", "longer question?", "a?")]
    out = task.generate({"image": image}, prompts, max_new_tokens=3)
    assert len(out) == 3 and all(len(o) <= 3 for o in out)


def _labelled_batch(task, tmp_path, labels):
    from pixparse.data.config import DataEvalConfig
    import webdataset as wds

    shard = _shard(tmp_path, [{"pages": [PAGE], "label": label} for label in labels], name="x")
    cfg = DataEvalConfig(source=shard)
    prep = task.preprocess(cfg, with_meta=True)
    items = [it for s in wds.tarfile_samples([{"url": shard}]) for it in prep(s, random.Random(0))]
    return task.collate(cfg)(items)


def test_xent_head_on_pooled_encoder_features(tmp_path):
    labels = ["memo", "letter", "memo", "form"]
    shard = _shard(tmp_path, [{"pages": [PAGE], "label": label} for label in labels])
    task = create_task(TaskConfig(name="finetune_xent", model_name="cruller_tiny"), train_source=shard)
    assert task.classes == ["form", "letter", "memo"]
    head = task.model.classifier
    # the encoder's width (64 in cruller_tiny), not the decoder's (96): any encoder width
    assert (head.in_features, head.out_features) == (task.model.image_encoder.num_features, 3) == (64, 3)
    batch = _labelled_batch(task, tmp_path, labels)
    assert task.targets(batch).tolist() == [2, 1, 2, 0]
    loss = task(batch)["loss"]
    assert torch.isclose(loss, torch.nn.functional.cross_entropy(
        task.model.classify(task.normalize(batch["image"])), torch.tensor([2, 1, 2, 0])))
    loss.backward()
    trained = {n for n, p in task.named_parameters() if p.grad is not None}
    assert "model.classifier.weight" in trained and any(n.startswith("model.image_encoder.") for n in trained)
    assert not any(n.startswith("model.text_decoder.") for n in trained)
    assert not any(p.requires_grad for p in task.model.text_decoder.parameters())
    own, rolled, count, texts = task.eval_batch(batch, None)
    assert own.shape == rolled.shape == count.shape == (4,) and count.tolist() == [1, 1, 1, 1]
    assert all(task.postprocess(t) in task.classes for t in texts)
    assert task.export_info()["num_classes"] == 3
    from pixparse.models.flops import classifier_flops

    stats = task.batch_stats(batch)  # the encoder and head only: no decoder work counted
    assert stats["flops"] == 4 * classifier_flops(task.model)[1] and stats["text_tokens"] == 0.0


def test_xent_from_a_reader_gets_a_fresh_head_and_exports_with_it(tmp_path):
    from pixparse.models.export import load_exported, save_exported

    reader = create_task(TaskConfig(name="read_pretrain", model_name="cruller_tiny"))
    save_exported(reader.model, reader.model_cfg, reader.tokenizer, str(tmp_path / "reader"), reader.export_info())
    shard = _shard(tmp_path, [{"pages": [PAGE], "label": label} for label in ("a", "b")])
    task = create_task(TaskConfig(name="finetune_xent", init_from=str(tmp_path / "reader")), train_source=shard)
    w = reader.model.image_encoder.trunk.blocks[0].attn.qkv.weight
    assert torch.equal(task.model.image_encoder.trunk.blocks[0].attn.qkv.weight, w)
    assert task.model.classifier.out_features == 2
    with torch.no_grad():
        task.model.classifier.weight.fill_(0.5)
    save_exported(task.model, task.model_cfg, task.tokenizer, str(tmp_path / "xent"), task.export_info())
    model, _, info = load_exported(str(tmp_path / "xent"))
    assert info["labels"] == ["a", "b"] and torch.all(model.classifier.weight == 0.5)
    # evaluating (or fine-tuning on) the classifier keeps its head: same classes
    again = create_task(TaskConfig(name="finetune_xent", init_from=str(tmp_path / "xent")))
    assert torch.all(again.model.classifier.weight == 0.5) and again.classes == ["a", "b"]
