"""Write IDL-format WebDataset shards: synthetic documents and real folders (FUNSD)."""
import io
import json
import os
import random
from collections.abc import Iterable, Iterator

import webdataset as wds

from pixparse.data.synth import find_fonts, synth_document


def write_shards(
    samples: Iterable[dict[str, bytes]],
    pattern: str,
    samples_per_shard: int,
    max_bytes_per_shard: int | None = None,
) -> list[str]:
    """Write samples ({'__key__', ext: bytes, ...}) into tar shards named `pattern % index`.

    A shard closes at `samples_per_shard` samples or once it holds `max_bytes_per_shard` bytes
    of payload. Each is written under a temporary name and renamed when complete, so a crash
    never leaves a truncated shard under a final name.
    """
    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be > 0, got {samples_per_shard}")
    if max_bytes_per_shard is not None and max_bytes_per_shard <= 0:
        raise ValueError(f"max_bytes_per_shard must be > 0, got {max_bytes_per_shard}")
    os.makedirs(os.path.dirname(os.path.abspath(pattern)), exist_ok=True)
    paths: list[str] = []
    writer, count, size = None, 0, 0

    def close() -> None:
        writer.close()
        final = pattern % len(paths)
        os.replace(final + ".tmp", final)
        paths.append(final)

    for sample in samples:
        if writer is None:
            writer = wds.TarWriter(pattern % len(paths) + ".tmp")
        # webdataset splits the key from the extension at the first dot: keys must have none.
        writer.write({**sample, "__key__": sample["__key__"].replace(".", "_")})
        count += 1
        size += sum(len(v) for k, v in sample.items() if not k.startswith("__"))
        if count == samples_per_shard or (max_bytes_per_shard and size >= max_bytes_per_shard):
            close()
            writer, count, size = None, 0, 0
    if writer is not None:
        close()
    return paths


def verify_shards(paths: list[str]) -> tuple[int, list[str]]:
    """Re-read every sample: tar structure, JSON and every image frame. Returns
    (samples read, problems as 'shard:key: reason')."""
    import json

    from PIL import Image

    from pixparse.data.decode import IMAGE_EXTS

    count, problems = 0, []
    for path in paths:
        try:
            for sample in wds.tarfile_samples([{"url": path}]):
                count += 1
                where = f"{path}:{sample['__key__']}"
                try:
                    json.loads(sample["json"])
                    ext = next(e for e in IMAGE_EXTS if e in sample)
                    image = Image.open(io.BytesIO(sample[ext]))
                    for frame in range(getattr(image, "n_frames", 1)):
                        image.seek(frame)
                        image.load()
                except Exception as e:  # report every kind of damage, keep checking
                    problems.append(f"{where}: {type(e).__name__}: {e}")
        except Exception as e:
            problems.append(f"{path}: unreadable tar: {e}")
    return count, problems


def synth_samples(
    num_samples: int, seed: int, page_size: tuple[int, int] = (480, 640), multipage_fraction: float = 0.2,
    font_size_range: tuple[float, float] = (1 / 70, 1 / 30),
) -> Iterator[dict[str, bytes]]:
    rng = random.Random(seed)
    fonts = find_fonts()
    for i in range(num_samples):
        num_pages = 2 if rng.random() < multipage_fraction else 1
        sample = synth_document(rng, page_size, fonts, num_pages, font_size_range)
        sample["__key__"] = f"synth{seed:04d}_{i:07d}"
        yield sample


def write_synth_shards(
    output_dir: str,
    num_shards: int = 4,
    samples_per_shard: int = 16,
    seed: int = 0,
    page_size: tuple[int, int] = (480, 640),
    font_size_range: tuple[float, float] = (1 / 70, 1 / 30),
    prefix: str = "synth",
) -> list[str]:
    """Write `num_shards` shards of synthetic pages as <output_dir>/<prefix>-%06d.tar."""
    samples = synth_samples(num_shards * samples_per_shard, seed, page_size, font_size_range=font_size_range)
    return write_shards(samples, os.path.join(output_dir, f"{prefix}-%06d.tar"), samples_per_shard)


def render_text_shards(
    output_dir: str, source: str, num_samples: int, seed: int, samples_per_shard: int, prefix: str,
) -> list[str]:
    """`num_samples` samples of a render source (data.render, e.g. 'render:lines?random=1') as
    IDL-format shards <output_dir>/<prefix>-%06d.tar: a held-out set, fixed by `seed`."""
    from pixparse.data.render import TextRenderer, parse_render_source

    renderer = TextRenderer(parse_render_source(source))

    def samples() -> Iterator[dict[str, bytes]]:
        for i in range(num_samples):
            r = renderer(random.Random(f"heldout/{seed}/{prefix}/{i}"))
            buf = io.BytesIO()
            r.image.save(buf, format="PNG")
            anno = {"pages": [{"lines": {"text": r.text.split("\n")}, "width": r.image.width,
                               "height": r.image.height}], "random": r.is_random}
            yield {"__key__": f"{prefix}{i:06d}", "json": json.dumps(anno).encode(), "png": buf.getvalue()}

    return write_shards(samples(), os.path.join(output_dir, f"{prefix}-%06d.tar"), samples_per_shard)
