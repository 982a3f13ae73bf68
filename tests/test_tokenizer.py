import os

import pytest

from pixparse.app.tokenizer import shard_texts, train_tokenizer
from pixparse.data.tokenizer import add_task_tokens, create_tokenizer

TEXT = "INVOICE No. 4471\nTotal: $1,250.00  (net 30)\nSigned - J. Doe"


def _round_trip(tok):
    ids = tok(TEXT, add_special_tokens=False).input_ids
    assert tok.decode(ids) == TEXT


def test_byte_tokenizer_round_trip_and_task_token():
    tok = create_tokenizer("byte")
    _round_trip(tok)
    assert add_task_tokens(tok, ["<s_pretrain>"]) == 1
    ids = tok("<s_pretrain>" + TEXT, add_special_tokens=False).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<s_pretrain>")
    assert add_task_tokens(tok, ["<s_pretrain>"]) == 0  # idempotent


def test_sentencepiece_trained_from_shards_round_trips(synth_shards, tmp_path):
    texts = list(shard_texts(synth_shards))
    assert len(texts) >= 32 and all(t.strip() for t in texts)
    path = train_tokenizer(synth_shards, str(tmp_path / "sp"), vocab_size=400)
    tok = create_tokenizer(path)
    assert tok.pad_token_id == 0 and tok.eos_token == "</s>"
    _round_trip(tok)  # newlines survive; unseen characters fall back to bytes
    add_task_tokens(tok, ["<s_pretrain>"])
    assert len(tok(texts[0], add_special_tokens=False).input_ids) < 0.9 * len(texts[0])  # pieces merge


def test_real_tokenizer_files(shared_data):
    root = os.path.join(shared_data, "tokenizers")
    for name in ("hf_test_sentencepiece.model", "albert_spiece.model"):
        tok = create_tokenizer(os.path.join(root, name))
        add_task_tokens(tok, ["<s_pretrain>"])
        assert tok.pad_token is not None and tok.eos_token is not None
        ids = tok("hello world", add_special_tokens=False).input_ids
        assert tok.decode(ids).lower() == "hello world"
    fast = create_tokenizer(os.path.join(root, "pix2tex_latex_tokenizer.json"))
    add_task_tokens(fast, ["<s_pretrain>"])
    assert fast.pad_token_id is not None


def test_bad_tokenizer_spec_is_named(tmp_path):
    with pytest.raises(ValueError, match="--task.tokenizer"):
        create_tokenizer(str(tmp_path / "missing.model"))


def test_sentencepiece_ids_in_one_lookup_equal_transformers_per_piece(shared_data, monkeypatch):
    """Base pieces map to ids through one dict (the loader's tokenization cost); the ids equal
    transformers' piece-by-piece conversion, with task tokens, unknown characters and empty text."""
    from transformers.tokenization_python import PreTrainedTokenizer

    tok = create_tokenizer(os.path.join(shared_data, "tokenizers", "albert_spiece.model"))
    add_task_tokens(tok, ["<s_pretrain>", "<s_total>"])
    texts = [TEXT, "<s_pretrain>" + TEXT + " <s_total> 12.00</s_total>", "snow \u2603 \u00e9t\u00e9\n\n x", "", " "]
    for text in texts:
        pieces = tok.tokenize(text)
        assert tok(text, add_special_tokens=False).input_ids == PreTrainedTokenizer.convert_tokens_to_ids(tok, pieces)
    expected = tok(TEXT, add_special_tokens=False).input_ids
    # text without task tokens never goes through transformers' per-piece lookup
    monkeypatch.setattr(tok, "_convert_token_to_id_with_added_voc", lambda t: pytest.fail("per-piece lookup"))
    assert tok(TEXT, add_special_tokens=False).input_ids == expected
