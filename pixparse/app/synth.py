"""`python -m pixparse.app.synth`: write synthetic IDL-format document shards (no download)."""
import logging


from pixparse.data.write import write_synth_shards
from pixparse.app.tool import run_tool

logger = logging.getLogger(__name__)


def synth(
    output_dir: str,
    num_shards: int = 4,
    samples_per_shard: int = 16,
    seed: int = 0,
    page_width: int = 480,
    page_height: int = 640,
) -> list[str]:
    """Render synthetic pages into <output_dir>/synth-000000.tar, ...

    Args:
        output_dir: Folder for the shards.
        num_shards: Shards to write.
        samples_per_shard: Documents per shard (about 20% are two-page TIFFs).
        seed: Seed of the text, layout and noise.
        page_width: Page width in pixels.
        page_height: Page height in pixels.
    """
    if num_shards <= 0:
        raise ValueError(f"--num_shards must be > 0, got {num_shards}")
    paths = write_synth_shards(output_dir, num_shards, samples_per_shard, seed, (page_width, page_height))
    print(f"wrote {len(paths)} shards x {samples_per_shard} documents: {paths[0]} .. {paths[-1]}")
    return paths


def main(argv: list[str] | None = None) -> None:
    run_tool(synth, argv)


if __name__ == "__main__":
    main()
