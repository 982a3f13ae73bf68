"""Write IDL-format WebDataset shards: synthetic documents and real folders (FUNSD)."""
import glob
import io
import json
import os
import random
from collections.abc import Iterable, Iterator

import webdataset as wds

from pixparse.data.synth import find_fonts, synth_document


def write_shards(
    samples: Iterable[dict[str, bytes]], pattern: str, samples_per_shard: int
) -> list[str]:
    """Write samples ({'__key__', ext: bytes, ...}) into tar shards named by `pattern` % index.

    Shards are written to a temporary name and renamed when complete, so a crash never leaves
    a truncated shard under the final name.
    """
    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be > 0, got {samples_per_shard}")
    os.makedirs(os.path.dirname(os.path.abspath(pattern)), exist_ok=True)
    paths: list[str] = []
    writer, count = None, 0

    def close() -> None:
        writer.close()
        final = pattern % (len(paths))
        os.replace(final + ".tmp", final)
        paths.append(final)

    for sample in samples:
        if writer is None:
            writer = wds.TarWriter(pattern % len(paths) + ".tmp")
        writer.write(sample)
        count += 1
        if count == samples_per_shard:
            close()
            writer, count = None, 0
    if writer is not None:
        close()
    return paths


def synth_samples(
    num_samples: int, seed: int, page_size: tuple[int, int] = (480, 640), multipage_fraction: float = 0.2
) -> Iterator[dict[str, bytes]]:
    rng = random.Random(seed)
    fonts = find_fonts()
    for i in range(num_samples):
        num_pages = 2 if rng.random() < multipage_fraction else 1
        sample = synth_document(rng, page_size, fonts, num_pages)
        sample["__key__"] = f"synth{seed:04d}_{i:07d}"
        yield sample


def write_synth_shards(
    output_dir: str,
    num_shards: int = 4,
    samples_per_shard: int = 16,
    seed: int = 0,
    page_size: tuple[int, int] = (480, 640),
) -> list[str]:
    """Write `num_shards` shards of synthetic pages as <output_dir>/synth-%06d.tar."""
    samples = synth_samples(num_shards * samples_per_shard, seed, page_size)
    return write_shards(samples, os.path.join(output_dir, "synth-%06d.tar"), samples_per_shard)


def funsd_samples(root: str) -> Iterator[dict[str, bytes]]:
    """FUNSD folder (<root>/annotations/*.json + <root>/images/*.png) -> IDL-format samples.

    Each FUNSD entity becomes a line (its text and box), in reading order (top, then left).
    """
    annotations = sorted(glob.glob(os.path.join(root, "annotations", "*.json")))
    if not annotations:
        raise ValueError(f"no FUNSD annotations under {root}/annotations")
    for path in annotations:
        stem = os.path.splitext(os.path.basename(path))[0]
        image_path = os.path.join(root, "images", stem + ".png")
        with open(path) as f:
            form = json.load(f)["form"]
        with open(image_path, "rb") as f:
            png = f.read()
        from PIL import Image

        width, height = Image.open(io.BytesIO(png)).size
        entities = sorted((e for e in form if e["text"].strip()), key=lambda e: (e["box"][1], e["box"][0]))
        page = {
            "lines": {
                "text": [e["text"] for e in entities],
                "bbox": [[e["box"][0] / width, e["box"][1] / height, e["box"][2] / width,
                          e["box"][3] / height] for e in entities],
            },
            "width": width,
            "height": height,
        }
        yield {"__key__": stem, "json": json.dumps({"pages": [page]}).encode(), "png": png}
