"""`python -m pixparse.app.write <format> <input> <output_dir>`: convert a dataset folder
(funsd, sroie, cord, docvqa, rvl_cdip, docbank, folder) or a Hugging Face dataset in the Hub's
schema (hf_cord, hf_rvl_cdip, hf_docvqa: a Hub name or a save_to_disk folder) into IDL-format
WebDataset shards."""
import itertools
import os
import sys
from typing import Literal

from tqdm import tqdm

from pixparse.app.tool import run_tool
from pixparse.data.formats import READERS, line_crops
from pixparse.data.hub import HUB_READERS
from pixparse.data.write import verify_shards, write_shards


def write(
    format: Literal["funsd", "sroie", "cord", "docvqa", "rvl_cdip", "docbank", "folder",
                    "hf_cord", "hf_rvl_cdip", "hf_docvqa"],
    input: str,
    output_dir: str,
    prefix: str | None = None,
    samples_per_shard: int = 1000,
    max_bytes_per_shard: int | None = None,
    verify: bool = False,
    max_samples: int | None = None,
    skip_samples: int = 0,
    crop_lines: bool = False,
    split: str = "train",
) -> list[str]:
    """Convert a dataset folder to shards <output_dir>/<prefix>-000000.tar, ...

    Args:
        format: The folder's layout, or hf_*: a Hugging Face dataset in the Hub's schema.
        input: The dataset folder (for FUNSD a split folder such as testing_data); for hf_*, a
            Hub dataset name or a save_to_disk folder.
        output_dir: Where the shards go.
        prefix: Shard name prefix (default: the format name).
        samples_per_shard: Most samples in one shard.
        max_bytes_per_shard: Also close a shard once it holds this many bytes.
        verify: Re-read every written sample (tar, JSON, every image frame) and fail on damage.
        max_samples: Write only the first N samples (in the reader's sorted order).
        skip_samples: Leave out the first N samples first (--skip_samples 80 --max_samples 20: a
            held-out split of documents 80-99).
        crop_lines: Write each boxed text line of each page as its own sample (the line's crop,
            its text as the page's one line): real lines for reading pretraining and evaluation.
        split: The split of an hf_* dataset.
    """
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"--max_samples must be > 0, got {max_samples}")
    if skip_samples < 0:
        raise ValueError(f"--skip_samples must be >= 0, got {skip_samples}")
    pattern = os.path.join(output_dir, f"{prefix or format}-%06d.tar")
    end = None if max_samples is None else skip_samples + max_samples
    reader = HUB_READERS[format](input, split) if format in HUB_READERS else READERS[format](input)
    samples = itertools.islice(reader, skip_samples, end)
    if crop_lines:
        samples = (line for sample in samples for line in line_crops(sample))
    # a bar of the samples written, on a terminal only (logs and CI stay clean)
    with tqdm(samples, desc=f"write {format}", unit="sample", total=None if crop_lines else max_samples,
              dynamic_ncols=True, leave=False, disable=not sys.stderr.isatty()) as bar:
        paths = write_shards(bar, pattern, samples_per_shard, max_bytes_per_shard)
    if not paths:
        raise ValueError(f"{format}: no samples found in {input}")
    print(f"wrote {len(paths)} shard(s): {paths[0]} .. {paths[-1]}")
    if verify:
        count, problems = verify_shards(paths)
        if problems:
            damaged = [p for p in paths if any(problem.startswith(f"{p}:") for problem in problems)]
            for path in damaged:  # a damaged shard is not left for a training run to read
                os.remove(path)
            raise ValueError(f"verify: {len(problems)} damaged sample(s) in {len(damaged)} shard(s), removed; "
                             f"first: {problems[0]}")
        print(f"verified {count} samples")
    return paths


def main(argv: list[str] | None = None) -> None:
    run_tool(write, argv, positional=True)


if __name__ == "__main__":
    main()
