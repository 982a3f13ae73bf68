"""WebDataset loader: shard stream split by rank and worker, decode + preprocess + collate in
workers, exactly `num_batches` batches per interval on every rank."""
import itertools
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls

from pixparse.data.config import DataEvalConfig, DataLoaderConfig
from pixparse.data.decode import SampleError
from pixparse.data.render import is_render_source, parse_render_source, render_samples

logger = logging.getLogger(__name__)

SKIPPED_KEY = "skipped"  # batch entry: {reason: count} of samples dropped since the last batch
LAST_SKIPPED_KEY = "last_skipped"  # batch entry: 'shard:key (reason): detail' of the latest, or ''



def expand_source_groups(source: str) -> list[list[str]]:
    """Brace-expand each '::'-separated source into its shard URLs."""
    groups = [expand_urls(part) for part in source.split("::")]
    for part, urls in zip(source.split("::"), groups):
        if not urls:
            raise ValueError(f"--data.train.source part {part!r} expands to no shards")
    return groups


def expand_source(source: str) -> list[str]:
    """Brace-expand a source ('a-{000..009}.tar', several joined by '::') into shard URLs."""
    return [u for group in expand_source_groups(source) for u in group]


def _worker_position() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class ShardStream(IterableDataset):
    """Endless stream of {'url': ...} for this rank and worker.

    Single-pass mode (eval): every shard once, in order, split by rank then worker.
    Finite mode: each pass shuffles all shards with (seed, interval, pass), then this rank takes
    every world_size-th and this worker every num_workers-th of those, so every sample is read
    exactly once per pass across ranks and workers. Resampled mode draws shards with replacement
    from a generator seeded by (seed, interval, rank, worker).
    """

    def __init__(
        self,
        urls: list[str],
        seed: int,
        rank: int,
        world_size: int,
        resampled: bool,
        groups: list[list[str]] | None = None,
        weights: list[float] | None = None,
        single_pass: bool = False,
    ) -> None:
        self.single_pass = single_pass
        self.urls = urls
        self.groups = groups or [urls]
        self.weights = weights or [float(len(g)) for g in self.groups]  # default: uniform over shards
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.resampled = resampled
        self.interval = 0  # set by the main process before each interval's workers start

    def __iter__(self) -> Iterator[dict[str, str]]:
        worker, num_workers = _worker_position()
        if self.resampled:
            rng = random.Random(f"{self.seed}/{self.interval}/{self.rank}/{worker}")
            while True:
                group = rng.choices(self.groups, weights=self.weights)[0]
                yield {"url": rng.choice(group)}
        if self.single_pass:  # eval: each shard once, in the given order
            yield from ({"url": u} for u in self.urls[self.rank :: self.world_size][worker::num_workers])
            return
        for epoch in itertools.count():
            urls = list(self.urls)
            random.Random(f"{self.seed}/{self.interval}/{epoch}").shuffle(urls)
            mine = urls[self.rank :: self.world_size][worker::num_workers]
            for url in mine:
                yield {"url": url}


class _SkipCounter:
    """Counts dropped samples by reason in the worker; logs at most one warning per 10 s."""

    def __init__(self) -> None:
        self.pending: Counter = Counter()
        self.last = ""
        self._last_warn = 0.0

    def add(self, reason: str, where: str, err: BaseException) -> None:
        self.pending[reason] += 1
        self.last = f"{where} ({reason}): {err}"
        now = time.monotonic()
        if now - self._last_warn > 10.0:
            self._last_warn = now
            logger.warning("skipped sample %s (%s): %s", where, reason, err)

    def take(self) -> dict[str, int]:
        out, self.pending = dict(self.pending), Counter()
        return out


def capped_tar_files(
    sources: Iterator[dict[str, Any]], max_sample_bytes: int, handler: Callable[[Exception], bool],
    too_large: Callable[[str, str, int], None],
) -> Iterator[dict[str, Any]]:
    """webdataset's tar_file_expander with a memory bound: each member's size is read from its
    tar header before its data, and the members of one sample (one key) may hold at most
    `max_sample_bytes` in all. Past that the whole sample is dropped (its later members passed
    over in the stream, never read into memory) and reported through `too_large(url, key, bytes)`."""
    import tarfile

    from webdataset.tariterators import base_plus_ext

    for source in sources:
        url = source["url"]
        key, held, members = None, 0, []  # the current sample's members, yielded when it ends
        try:
            stream = tarfile.open(fileobj=source["stream"], mode="r|*")
            for info in stream:
                if not info.isreg() or info.name is None or info.name.startswith("__"):
                    continue
                prefix = base_plus_ext(info.name)[0]
                if prefix != key:
                    yield from members
                    key, held, members = prefix, 0, []
                if held > max_sample_bytes:  # already dropped
                    continue
                held += info.size
                if held > max_sample_bytes:
                    too_large(url, str(prefix), held)
                    members = []
                    continue
                members.append({"fname": info.name, "data": stream.extractfile(info).read(), "__url__": url})
                stream.members = []  # streaming: keep no member list
            yield from members
            yield {}  # end of shard: samples never span two shards
        except Exception as exn:  # noqa: BLE001 - a damaged or truncated tar: the handler counts it
            yield from members
            yield {}
            exn.args = exn.args + (url,)
            if not handler(exn):
                break


# What bad data raises while it is decoded and preprocessed: SampleError (reasons the decoders
# name), RecursionError (JSON nested past Python's limit), and a codec's own errors. A bug in our
# code (TypeError, AttributeError, ...) is not bad data: it propagates.
DATA_ERRORS = (SampleError, RecursionError, OSError, ValueError, KeyError, EOFError, UnicodeError)


def data_error_reason(err: Exception) -> str:
    """The skip counter's reason for one of DATA_ERRORS."""
    if isinstance(err, SampleError):
        return err.reason
    return "nested_too_deep" if isinstance(err, RecursionError) else "error"


PARTNER_KEY = "partner"  # eval item: the item whose pixels it is scored against for image_gap
ROLLED_KEY = "rolled"  # eval batch: the same batch with each sample's pixels from its partner
TEXT_KEYS = ("input_ids", "prompt_length", "prompt_ids", "meta")  # what an item keeps with its partner's pixels


def paired_in_shard(items: Iterator[tuple[str, str, dict[str, Any]]],
                    last_item_before: Callable[[str], dict[str, Any] | None]) -> Iterator[dict[str, Any]]:
    """Eval: give each item (url, sample key, item) a partner for image_gap, an item of another
    sample: the last item of the sample before it in its shard (the shard's first sample: its
    last sample's). A shard of one sample gets the last item of the shard before it in the
    source's order (`last_item_before(url)`, read again for it). Shards are read whole by one
    worker of one rank, so the pairs are the same for any batch size, worker or rank count. An
    item with no other sample to pair with (a source of one sample) is marked meta['paired']
    False and left out of image_gap. The first sample's items are yielded when the shard ends."""
    url, key = None, None
    first: list[dict[str, Any]] = []  # the shard's first sample's items (a page's questions)
    prev_last = None  # the last item of the sample before the current one (None: still the first)
    cur_last = None  # the last item seen in this shard

    def pixels(item: dict[str, Any]) -> dict[str, Any]:  # a copy: partners never chain
        return {k: v for k, v in item.items() if k not in TEXT_KEYS and k != PARTNER_KEY}

    def pair(item: dict[str, Any], partner: dict[str, Any] | None) -> dict[str, Any]:
        item[PARTNER_KEY] = pixels(partner if partner is not None else item)
        if "meta" in item:
            item["meta"]["paired"] = partner is not None
        return item

    def close() -> Iterator[dict[str, Any]]:
        if first:
            partner = cur_last if prev_last is not None else last_item_before(url)
            yield from (pair(f, partner) for f in first)

    for item_url, item_key, item in items:
        if item_url != url:
            yield from close()
            url, key, first, prev_last, cur_last = item_url, item_key, [item], None, item
            continue
        if item_key != key:  # the next sample of the shard
            key, prev_last = item_key, cur_last
        if prev_last is None:
            first.append(item)
        else:
            yield pair(item, prev_last)
        cur_last = item
    yield from close()


class SamplePipeline(IterableDataset):
    """shards -> tar members -> shuffle -> decode/preprocess (errors skipped and counted) -> batches."""

    def __init__(
        self,
        shards: ShardStream,
        preprocess: Callable[[dict[str, Any], random.Random], dict[str, Any] | list[dict[str, Any]]],
        collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
        batch_size: int,
        shuffle_buffer: int,
        seed: int,
        max_skip_fraction: float = 1.0,
        max_sample_bytes: int = 256 * 2**20,
    ) -> None:
        self.max_skip_fraction = max_skip_fraction
        self.max_sample_bytes = max_sample_bytes
        self.shards = shards
        self.preprocess = preprocess
        self.collate = collate
        self.batch_size = batch_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed

    @property
    def interval(self) -> int:
        return self.shards.interval

    def set_interval(self, interval: int) -> None:
        self.shards.interval = interval

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, _ = _worker_position()
        skips = _SkipCounter()

        # Count shard opens, not errors: one truncated shard raises several errors in one read.
        # Two passes over every shard with no sample read (all unreadable, empty, or a dead
        # 'pipe:' command) would otherwise loop forever.
        state = {"opens": 0, "url": "?"}
        max_opens = 2 * max(1, len(self.shards.urls))

        def opened_shards() -> Iterator[dict[str, str]]:
            for shard in self.shards:
                state["opens"] += 1
                if state["opens"] > max_opens:
                    raise RuntimeError(
                        f"{max_opens} shard reads in a row gave no sample; latest problem: "
                        f"{skips.last or 'none (the shards are empty)'}"
                    )
                state["url"] = shard["url"]
                yield shard

        def tar_error(exn: Exception) -> bool:
            skips.add("bad_tar", state["url"], exn)
            return True  # keep going with the next member / shard

        def too_large(url: str, key: str, size: int) -> None:
            skips.add("sample_too_large", f"{url}:{key}", ValueError(
                f"its members hold over {size} bytes, over --data.*.max_sample_bytes={self.max_sample_bytes}"))

        def tar_samples(shard: dict[str, str]) -> Iterator[dict[str, Any]]:
            streams = wds.tariterators.url_opener([shard], handler=tar_error)
            files = capped_tar_files(streams, self.max_sample_bytes, tar_error, too_large)
            yield from wds.tariterators.group_by_keys(files, handler=tar_error)

        draws: Counter = Counter()  # draws of each render source in this worker (seeds its samples)
        stream_seed = f"{self.seed}/{self.interval}/{self.shards.rank}/{worker}"

        def read(shards: Iterator[dict[str, str]]) -> Iterator[dict[str, Any]]:
            for shard in shards:
                url = shard["url"]
                if is_render_source(url):
                    samples = render_samples(url, stream_seed, draws[url])
                    draws[url] += 1
                else:
                    samples = tar_samples(shard)
                for sample in samples:
                    state["opens"] = 0  # before the shuffle buffer, which pulls many shards at once
                    yield sample

        samples = read(opened_shards())
        if self.shuffle_buffer > 0:
            rng = random.Random(f"{self.seed}/{self.interval}/{self.shards.rank}/{worker}/shuffle")
            samples = wds.filters._shuffle(samples, self.shuffle_buffer, min(self.shuffle_buffer, 16), rng)
        batch: list[dict[str, Any]] = []
        held: list[dict[str, Any]] = []
        counts = {"read": 0, "skipped": 0, "in_a_row": 0}
        # The engine checks the skip rate when it logs, which never comes if no batch is ever
        # made (every sample bad while the tars read): the worker stops itself instead.
        max_in_a_row = max(64, 4 * self.batch_size)

        def skip(reason: str, where: str, err: Exception) -> None:
            skips.add(reason, where, err)
            counts["skipped"] += 1
            counts["in_a_row"] += 1
            if counts["in_a_row"] >= max_in_a_row and counts["skipped"] > self.max_skip_fraction * counts["read"]:
                raise RuntimeError(
                    f"the last {counts['in_a_row']} samples read were all unusable ({counts['skipped']} of "
                    f"{counts['read']} in this worker), over --data.*.max_skip_fraction="
                    f"{self.max_skip_fraction}. Latest: {skips.last}"
                )

        def items_of(sample: dict[str, Any]) -> list[dict[str, Any]]:
            """The sample's items (a document may give several pages); raises on unusable data."""
            where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
            # Per-sample RNG: the same sample gets the same page/augmentation for a given
            # seed and interval, whichever worker reads it.
            out = self.preprocess(sample, random.Random(f"{self.seed}/{self.interval}/{where}"))
            return out if isinstance(out, list) else [out]

        def processed() -> Iterator[tuple[str, str, dict[str, Any]]]:
            """(shard URL, sample key, item) of every usable sample; unusable ones skipped, counted."""
            for sample in samples:
                counts["read"] += 1
                try:
                    out = items_of(sample)
                except DATA_ERRORS as e:
                    skip(data_error_reason(e), f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}", e)
                    continue
                counts["in_a_row"] = 0
                for item in out:
                    yield sample.get("__url__", "?"), sample.get("__key__", "?"), item

        def last_item_before(url: str) -> dict[str, Any] | None:
            """The last usable item of the shard before `url` in the source (cyclic), read again."""
            urls = self.shards.urls
            if url not in urls or len(urls) < 2:
                return None
            last = None
            for sample in tar_samples({"url": urls[urls.index(url) - 1]}):
                try:
                    last = (items_of(sample) or [last])[-1]
                except DATA_ERRORS:
                    continue  # counted where that shard is read for itself
            return last

        if self.shards.single_pass:
            items = paired_in_shard(processed(), last_item_before)
        else:
            items = (item for _, _, item in processed())
        for item in items:
            batch.append(item)
            if len(batch) < self.batch_size:
                continue
            if not self.shards.single_pass:
                yield self._emit(batch, skips)
            else:  # eval: held back one batch, so the last one carries the skips of the stream's end
                if held:
                    yield self._emit(held, skips)
                held = batch
            batch = []
        if self.shards.single_pass:  # eval keeps the last, partial batch
            for rest in (held, batch):
                if rest:
                    yield self._emit(rest, skips)

    def _emit(self, batch: list[dict[str, Any]], skips: _SkipCounter) -> dict[str, Any]:
        """Collate, with the skips counted since the previous batch (eval: and the batch again with
        each sample's pixels replaced by its partner's, under ROLLED_KEY)."""
        if PARTNER_KEY in batch[0]:
            rolled = [{**item[PARTNER_KEY], **{k: v for k, v in item.items() if k in TEXT_KEYS}} for item in batch]
            batch = [{k: v for k, v in item.items() if k != PARTNER_KEY} for item in batch]
            collated = self.collate(batch)
            collated[ROLLED_KEY] = self.collate(rolled)
        else:
            collated = self.collate(batch)
        collated[LAST_SKIPPED_KEY] = skips.last
        collated[SKIPPED_KEY] = skips.take()
        return collated


class Loader:
    """Yields exactly `num_batches` micro-batches per interval; call set_interval first."""

    def __init__(self, pipeline: SamplePipeline, num_batches: int, num_workers: int) -> None:
        self.pipeline = pipeline
        self.num_batches = num_batches
        self.num_workers = num_workers
        # Not persistent: workers copy the pipeline (and its interval) at each iter().
        self.dataloader = DataLoader(
            pipeline,
            batch_size=None,
            num_workers=num_workers,
            persistent_workers=False,
            prefetch_factor=2 if num_workers > 0 else None,
            pin_memory=torch.cuda.is_available(),  # page-locked batches: async host-to-GPU copies
            # Its own generator: each iter() draws the workers' base seed from it, which would
            # otherwise come from the global torch RNG and shift the model's dropout stream
            # (a resumed run starts its iterator at another point of that stream).
            generator=torch.Generator().manual_seed(pipeline.seed),
        )

    def set_interval(self, interval: int) -> None:
        self.pipeline.set_interval(interval)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[dict[str, Any]]:
        """Batches start..num_batches-1 of the interval, exactly as a full pass would yield them.

        The first `start` batches are still produced by the workers and dropped: the pipeline is
        deterministic but which raw samples fill a batch depends on how many were skipped as bad.
        """
        # Workers take turns, so islice takes ceil(num_batches / num_workers) or fewer from each.
        return itertools.islice(iter(self.dataloader), start, self.num_batches)


def _check_local_shards(urls: list[str], flag: str) -> None:
    """Every local shard (not 'pipe:', a URL or a render source) must exist; render sources parse."""
    for url in urls:
        if is_render_source(url):
            parse_render_source(url)
    missing = [u for u in urls if not u.startswith("pipe:") and "://" not in u and not is_render_source(u)
               and not os.path.isfile(u)]
    if missing:
        raise ValueError(f"{flag}: {len(missing)} of {len(urls)} shard(s) do not exist, e.g. "
                         f"{missing[:3]}; check the path and brace pattern")


def probe_pipe_sources(source: str, flag: str, timeout_s: float = 120.0) -> None:
    """Run the first 'pipe:' command of each part of `source` until it gives one tar block (512
    bytes), so a command that fails (no such file, no credentials, a typo) is reported before any
    process group starts rather than as unreadable shards later. The command runs as the loader
    will run it (webdataset: through the shell, braces already expanded by us)."""
    import subprocess
    import tarfile

    for group in expand_source_groups(source):
        url = group[0]
        if not url.startswith("pipe:"):
            continue
        cmd = url[len("pipe:"):]
        proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            head = proc.stdout.read(512)
            if len(head) < 512:
                code = proc.wait(timeout=timeout_s)
                err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                raise ValueError(f"{flag}: {url} gave {len(head)} bytes and exit status {code}"
                                 f"{': ' + err[-1] if err else ''}; check the command")
            try:
                tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
            except tarfile.HeaderError as e:
                raise ValueError(f"{flag}: {url} does not start with a tar header ({e}); the command must "
                                 f"write a tar shard to stdout (e.g. 'aws s3 cp s3://... -')") from None
        finally:
            proc.kill()
            proc.wait()


def check_shards_cover(cfg: DataLoaderConfig, world_size: int) -> list[str]:
    """Expand the source and check that every rank and worker gets a shard (finite mode)."""
    urls = expand_source(cfg.source)
    _check_local_shards(urls, "--data.train.source")
    readers = world_size * max(cfg.num_workers, 1)
    if not cfg.resampled and len(urls) < readers:
        raise ValueError(
            f"--data.train.source has {len(urls)} shard(s) but {world_size} rank(s) x "
            f"{max(cfg.num_workers, 1)} worker(s) = {readers} readers need one each. Write more "
            f"shards, lower --data.train.num_workers, or set --data.train.resampled true."
        )
    return urls


def create_loader(
    cfg: DataLoaderConfig,
    preprocess: Callable[[dict[str, Any], random.Random], dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
    num_batches: int,
    rank: int,
    world_size: int,
    seed: int,
) -> Loader:
    urls = check_shards_cover(cfg, world_size)
    shards = ShardStream(urls, seed, rank, world_size, cfg.resampled,
                         groups=expand_source_groups(cfg.source), weights=cfg.source_weights)
    pipeline = SamplePipeline(shards, preprocess, collate, cfg.batch_size, cfg.shuffle_buffer, seed,
                              cfg.max_skip_fraction, cfg.max_sample_bytes)
    return Loader(pipeline, num_batches, cfg.num_workers)


def check_eval_shards(cfg: DataEvalConfig, world_size: int | None = None) -> list[str]:
    """Expand the eval source; every local shard must exist, and with `world_size` (evaluation
    inside training, where ranks step together) every rank needs a shard."""
    urls = expand_source(cfg.source)
    _check_local_shards(urls, "--data.eval.source")
    if world_size is not None and len(urls) < world_size:
        raise ValueError(f"--data.eval.source has {len(urls)} shard(s) for {world_size} ranks; each rank "
                         f"evaluates whole shards: write at least {world_size}")
    return urls


def create_eval_loader(
    cfg: DataEvalConfig,
    preprocess: Callable[[dict[str, Any], random.Random], dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    rank: int,
    world_size: int,
) -> DataLoader:
    """One ordered pass over the eval shards: rank r reads shards r, r + world_size, ... (so no
    sample is read twice across ranks), its workers split those; the last batch may be short.
    A rank with no shard yields nothing."""
    urls = check_eval_shards(cfg)
    shards = ShardStream(urls, 0, rank, world_size, resampled=False, single_pass=True)
    pipeline = SamplePipeline(shards, preprocess, collate, cfg.batch_size, shuffle_buffer=0, seed=0,
                              max_skip_fraction=cfg.max_skip_fraction, max_sample_bytes=cfg.max_sample_bytes)
    num_workers = min(cfg.num_workers, len(urls[rank::world_size]))
    return DataLoader(pipeline, batch_size=None, num_workers=num_workers,
                      prefetch_factor=2 if num_workers > 0 else None)
