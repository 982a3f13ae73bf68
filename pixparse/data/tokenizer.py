"""Tokenizers: load by spec, add task tokens, train a SentencePiece model from shard text."""
import logging
import os
from collections.abc import Iterable, Sequence

from transformers import (
    AutoTokenizer,
    ByT5Tokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    SentencePieceBackend,
)

logger = logging.getLogger(__name__)

BYTE_TOKENIZER = "byte"


def _load_sentencepiece(path: str) -> PreTrainedTokenizerBase:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=path)
    special = {}
    for attr, piece_id in (("unk_token", sp.unk_id()), ("bos_token", sp.bos_id()),
                           ("eos_token", sp.eos_id()), ("pad_token", sp.pad_id())):
        if piece_id >= 0:
            special[attr] = sp.id_to_piece(piece_id)
    return SentencePieceBackend(vocab_file=path, **special)


def create_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """Build a tokenizer from a spec, with no network unless `spec` is a hub name.

    Args:
        spec: 'byte' (byte-level, built in, no files), a SentencePiece '.model' file, a
            'tokenizer.json' file, a local tokenizer folder, or a Hugging Face hub name.
    """
    if spec == BYTE_TOKENIZER:
        # 256 byte ids + 3 specials + 125 sentinels; no vocab file, so it builds anywhere.
        tok = ByT5Tokenizer()
    elif spec.endswith(".model"):
        if not os.path.isfile(spec):
            raise ValueError(f"--task.tokenizer: SentencePiece model {spec!r} does not exist")
        tok = _load_sentencepiece(spec)
    elif spec.endswith(".json"):
        if not os.path.isfile(spec):
            raise ValueError(f"--task.tokenizer: tokenizer file {spec!r} does not exist")
        tok = PreTrainedTokenizerFast(tokenizer_file=spec)
    else:
        local = os.path.isdir(spec)
        try:
            tok = AutoTokenizer.from_pretrained(spec, local_files_only=local)
        except OSError as e:
            raise ValueError(
                f"--task.tokenizer: cannot load {spec!r} ({e}). Offline, pass a local folder, a "
                f"SentencePiece .model, a tokenizer.json, or 'byte'."
            ) from e
    return tok


def add_task_tokens(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str]) -> int:
    """Add task tokens (and pad/eos if the tokenizer lacks them); return how many were added."""
    special: dict = {}
    if tokenizer.eos_token is None:
        special["eos_token"] = "</s>"
    if tokenizer.pad_token is None:
        special["pad_token"] = "<pad>"
    new = [t for t in tokens if t not in tokenizer.get_vocab()]
    if new:
        special["additional_special_tokens"] = new
    return tokenizer.add_special_tokens(special, replace_extra_special_tokens=False) if special else 0


def train_sentencepiece(
    texts: Iterable[str],
    output_prefix: str,
    vocab_size: int = 8000,
    model_type: str = "unigram",
    character_coverage: float = 0.9999,
) -> str:
    """Train a SentencePiece model on `texts`; returns the '.model' path.

    Newlines are kept as a token (OCR targets join lines with them), ids 0-3 are
    pad/unk/bos/eos, and unseen characters fall back to bytes.
    """
    import sentencepiece as spm

    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=output_prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=True,
        user_defined_symbols=["\n"],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_by_whitespace=True,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        hard_vocab_limit=False,
        max_sentence_length=1 << 16,
        minloglevel=2,
    )
    return output_prefix + ".model"
