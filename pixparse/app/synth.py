"""`python -m pixparse.app.synth`: write synthetic IDL-format document shards (no download)."""
import logging


from pixparse.data.write import render_text_shards, write_synth_shards
from pixparse.app.tool import run_tool

logger = logging.getLogger(__name__)


def synth(
    output_dir: str,
    num_shards: int = 4,
    samples_per_shard: int = 16,
    seed: int = 0,
    page_width: int = 480,
    page_height: int = 640,
    font_size: tuple[float, float] = (1 / 70, 1 / 30),
    prefix: str = "synth",
    render: str | None = None,
) -> list[str]:
    """Render synthetic pages into <output_dir>/synth-000000.tar, ...; with --render, samples of a
    render source instead (a held-out reading set: 'render:lines', 'render:lines?random=1', ...).

    Args:
        output_dir: Folder for the shards.
        num_shards: Shards to write.
        samples_per_shard: Documents per shard (about 20% are two-page TIFFs).
        seed: Seed of the text, layout and noise.
        page_width: Page width in pixels.
        page_height: Page height in pixels.
        font_size: Smallest and largest font size as fractions of the page height (the default
            gives 9-21 px on a 640 px page: legible at 576x448, not at 128x96).
        prefix: Shard name prefix.
        render: A render source (see pixparse.data.render): num_shards x samples_per_shard of its
            samples, fixed by --seed (page_width, page_height and font_size do not apply).
    """
    if num_shards <= 0:
        raise ValueError(f"--num_shards must be > 0, got {num_shards}")
    if not 0 < font_size[0] <= font_size[1] < 1:
        raise ValueError(f"--font_size must be two fractions 0 < min <= max < 1 of the page height, got {font_size}")
    if render is not None:
        paths = render_text_shards(output_dir, render, num_shards * samples_per_shard, seed, samples_per_shard, prefix)
        print(f"wrote {len(paths)} shards x {samples_per_shard} samples of {render}: {paths[0]} .. {paths[-1]}")
        return paths
    paths = write_synth_shards(output_dir, num_shards, samples_per_shard, seed, (page_width, page_height),
                               font_size_range=font_size, prefix=prefix)
    print(f"wrote {len(paths)} shards x {samples_per_shard} documents: {paths[0]} .. {paths[-1]}")
    return paths


def main(argv: list[str] | None = None) -> None:
    run_tool(synth, argv)


if __name__ == "__main__":
    main()
