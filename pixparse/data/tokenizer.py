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


class SentencePieceTokenizer(SentencePieceBackend):
    """transformers' generic SentencePiece wrapper, decoding through sentencepiece itself.

    The generic convert_tokens_to_string only swaps the word-boundary marker, so byte-fallback
    pieces ('<0x56>') and user-defined symbols would come back verbatim instead of as text.
    """

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        # Each line after a newline piece was encoded as a new sentence (with sentencepiece's
        # leading-space marker), so decode line by line and rejoin with newlines.
        lines, line = [], []
        for t in tokens:
            if t == "\n":
                lines.append(self.sp_model.decode_pieces(line))
                line = []
            else:
                line.append(t)
        lines.append(self.sp_model.decode_pieces(line))
        return "\n".join(lines)

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Pieces -> ids through one dict of the model's pieces: transformers looks each piece up
        through two Python calls per piece, a loader worker's hot path."""
        if isinstance(tokens, str) or not self._added_tokens_encoder.keys().isdisjoint(tokens):
            return super().convert_tokens_to_ids(tokens)
        if getattr(self, "_piece_ids", None) is None:
            sp = self.sp_model
            self._piece_ids = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
        get, unk = self._piece_ids.get, self.sp_model.unk_id()
        return [get(t, unk) for t in tokens]


def _load_sentencepiece(path: str) -> PreTrainedTokenizerBase:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=path)
    special = {}
    for attr, piece_id in (("unk_token", sp.unk_id()), ("bos_token", sp.bos_id()),
                           ("eos_token", sp.eos_id()), ("pad_token", sp.pad_id())):
        if piece_id >= 0:
            special[attr] = sp.id_to_piece(piece_id)
    return SentencePieceTokenizer(vocab_file=path, **special)


def why(e: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


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
        try:
            tok = _load_sentencepiece(spec)
        except Exception as e:  # noqa: BLE001 - sentencepiece raises RuntimeError/OSError/... on a bad file
            raise ValueError(f"--task.tokenizer: {spec} is not a readable SentencePiece model ({why(e)})") from None
    elif spec.endswith(".json"):
        if not os.path.isfile(spec):
            raise ValueError(f"--task.tokenizer: tokenizer file {spec!r} does not exist")
        try:
            tok = PreTrainedTokenizerFast(tokenizer_file=spec)
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises its own Exception type
            raise ValueError(f"--task.tokenizer: {spec} is not a readable tokenizer.json ({why(e)})") from None
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

    Each text is split into lines and each line is a training sentence; the newline is its
    own piece (OCR targets join lines with it). No normalization (the text is kept as is),
    ids 0-3 are pad/unk/bos/eos, and unseen characters fall back to bytes.
    """
    import sentencepiece as spm

    lines = (line for text in texts for line in text.split("\n") if line.strip())
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines,
        model_prefix=output_prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=True,
        user_defined_symbols=["\n"],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3,
        hard_vocab_limit=False,
        max_sentence_length=1 << 16,
        minloglevel=2,
    )
    return output_prefix + ".model"
