"""`python -m pixparse.app.tokenizer`: train a SentencePiece tokenizer on the text of shards."""
import itertools
import json
from collections.abc import Iterator

import webdataset as wds

from pixparse.data.decode import page_lines
from pixparse.data.loader import expand_source
from pixparse.data.tokenizer import train_sentencepiece
from pixparse.app.tool import run_tool


def shard_texts(source: str, max_documents: int | None = None) -> Iterator[str]:
    """Page texts (lines joined by newline) from the annotation JSON of IDL/PDFA shards."""
    urls = expand_source(source)
    samples = wds.tarfile_to_samples()(iter({"url": u} for u in urls))
    docs = (s for s in samples if "json" in s)
    for sample in itertools.islice(docs, max_documents):
        for page in json.loads(sample["json"]).get("pages", []):
            text = "\n".join(t for t in page_lines(page) if t.strip())
            if text:
                yield text


def train_tokenizer(
    source: str,
    output_prefix: str,
    vocab_size: int = 8000,
    model_type: str = "unigram",
    max_documents: int | None = None,
) -> str:
    """Train a SentencePiece model; writes <output_prefix>.model (use it as --task.tokenizer).

    Args:
        source: Shards to read text from (brace patterns allowed).
        output_prefix: Output path without extension.
        vocab_size: Pieces in the vocabulary (a soft limit for small corpora).
        model_type: 'unigram' or 'bpe'.
        max_documents: Read at most this many documents (unset: all).
    """
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"--model_type must be 'unigram' or 'bpe', got {model_type!r}")
    path = train_sentencepiece(shard_texts(source, max_documents), output_prefix, vocab_size, model_type)
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> None:
    run_tool(train_tokenizer, argv)


if __name__ == "__main__":
    main()
