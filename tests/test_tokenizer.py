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


def _real_texts(shared_data) -> list[str]:
    """DocBank pages (words, a newline where the line's y changes) and SROIE receipts (lines)."""
    import glob

    texts = []
    for path in sorted(glob.glob(os.path.join(shared_data, "docbank_samples", "*.txt")))[:20]:
        lines, last_y = [[]], None
        with open(path, encoding="utf-8") as f:
            for row in f:
                cols = row.rstrip("\n").split("\t")
                if len(cols) > 2 and cols[0]:
                    if last_y is not None and cols[2] != last_y:
                        lines.append([])
                    lines[-1].append(cols[0])
                    last_y = cols[2]
        texts.append("\n".join(" ".join(words) for words in lines))
    for path in sorted(glob.glob(os.path.join(shared_data, "sroie", "box", "*.csv")))[:20]:
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.append("\n".join(row.rstrip("\n").split(",", 8)[-1] for row in f))
    return texts


class _Counting:
    """A tokenizer that records how many characters each call tokenized."""

    def __init__(self, tok) -> None:
        self.tok, self.chars = tok, []

    def __call__(self, text, **kwargs):
        self.chars.append(len(text))
        return self.tok(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_targets_tokenize_a_prefix_yet_give_the_whole_texts_first_ids(shared_data, tmp_path):
    """SentencePiece models that split on whitespace tokenize only a prefix of a long target (cut
    at a space): the ids equal the first ids of the whole text's tokenization, on real
    pages and receipts, runs of spaces and blank lines, a long run without one, for ALBERT's unigram, Mistral's BPE and a
    model trained here (identity normalization, newline pieces), at several max_length."""
    from pixparse.data.tokenizer import train_sentencepiece
    from pixparse.data.transforms import TextTargets

    texts = _real_texts(shared_data)
    assert len(texts) == 40 and max(map(len, texts)) > 3000
    texts += [("a  b   c\n\n d \n" * 300).strip(), "word " * 900, "x" * 400 + " y" * 600, " " * 40 + "late start " * 300]
    trained = train_sentencepiece(texts[:20], str(tmp_path / "sp"), vocab_size=600)
    root = os.path.join(shared_data, "tokenizers")
    for path in (os.path.join(root, "albert_spiece.model"), os.path.join(root, "mistral_tokenizer.model.v1"), trained):
        if not path.endswith(".model"):  # create_tokenizer knows SentencePiece files by extension
            os.symlink(path, str(tmp_path / "mistral.model"))
            path = str(tmp_path / "mistral.model")
        tok = create_tokenizer(path)
        add_task_tokens(tok, ["<s_pretrain>"])
        for max_length in (8, 64, 512):
            targets = TextTargets(_Counting(tok), max_length)
            assert targets._whitespace_split, path
            prompt = targets.prompt_ids("<s_pretrain>")
            n = max_length - len(prompt) - 1
            for text in texts:
                targets.tokenizer.chars.clear()
                ids, _ = targets("<s_pretrain>", text)
                whole = tok(text, add_special_tokens=False).input_ids
                assert ids == prompt + whole[:n] + [tok.eos_token_id], (path, max_length, text[:60])
                if len(whole) > 4 * n and " " in text:
                    assert max(targets.tokenizer.chars) < len(text), (path, max_length)  # a prefix only
