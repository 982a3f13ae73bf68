"""Evaluation, task-agnostic: token loss, image_gap, generation and the task's metrics.

image_gap (nats per target token) = the token loss with the batch's images rolled by one
(every sample paired with another sample's page) minus the loss with each sample's own image.
A model that reads its page has a clearly positive gap; one whose decoder ignores the pixels
(it memorized or guessed the text) has a gap near 0, however low its loss.
"""
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from pixparse.data.loader import LAST_SKIPPED_KEY, ROLLED_KEY, SKIPPED_KEY
from pixparse.engine.dist import to_device
from pixparse.engine.logging import logs_above_bar
from pixparse.engine.task import EngineTask

logger = logging.getLogger(__name__)


@dataclass
class EvalSums:
    """Additive totals of one rank's evaluation (summed over ranks)."""

    loss_sum: float = 0.0  # own-image token loss
    tokens: int = 0
    gap_own_sum: float = 0.0  # own vs rolled loss, over samples of batches with >= 2 samples
    gap_rolled_sum: float = 0.0
    gap_tokens: int = 0
    skipped: Counter = field(default_factory=Counter)
    last_skipped: str = ""

    def add(self, other: "EvalSums") -> None:
        self.loss_sum += other.loss_sum
        self.tokens += other.tokens
        self.gap_own_sum += other.gap_own_sum
        self.gap_rolled_sum += other.gap_rolled_sum
        self.gap_tokens += other.gap_tokens
        self.skipped.update(other.skipped)
        self.last_skipped = other.last_skipped or self.last_skipped


def _lockstep(batches: Iterable[dict[str, Any]], device: torch.device) -> Iterator[tuple[dict[str, Any], bool]]:
    """(batch, real) until every rank has run out: a rank that is done repeats its last batch
    (real=False) so ZeRO-3's collective forwards stay matched. Needs >= 1 batch per rank."""
    it = iter(batches)
    last = None
    while True:
        batch = next(it, None)
        flag = torch.tensor([0.0 if batch is None else 1.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if not flag.item():
            return
        if batch is None:
            if last is None:
                raise RuntimeError("this rank got no eval batch; give the eval source at least one "
                                   "shard per rank")
            yield last, False
        else:
            last = batch
            yield batch, True


@torch.no_grad()
def evaluate(
    task: EngineTask,
    batches: Iterable[dict[str, Any]],
    device: torch.device,
    max_samples: int | None = None,
    synced: bool = False,
    keep_images: int = 0,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], EvalSums]:
    """Run the task's model over `batches` (with `meta`: key and reference per sample).

    Returns this rank's records (key, generated text, parsed prediction, reference, token loss,
    image_gap, per-sample scores) and additive sums. With `synced` (ZeRO-3: forwards are collective) every
    rank runs the same number of forwards and generation steps. The first `keep_images` records
    also hold their page image ('image', (C, H, W) uint8, for a gallery). `progress` shows a bar of
    the samples read.
    """
    records: list[dict[str, Any]] = []
    sums = EvalSums()
    max_new = task.cfg.max_new_tokens
    stream = _lockstep(batches, device) if synced else ((b, True) for b in batches)
    bar = tqdm(total=max_samples, desc="eval", unit="sample", dynamic_ncols=True, leave=False, disable=not progress)
    for batch, real in stream:
        if real:
            sums.skipped.update(batch.get(SKIPPED_KEY, {}))
            sums.last_skipped = batch.get(LAST_SKIPPED_KEY, "") or sums.last_skipped
        full = max_samples is not None and len(records) >= max_samples
        if full and not synced:
            break
        meta = batch.get("meta", [])
        b = to_device({k: v for k, v in batch.items() if k not in (SKIPPED_KEY, LAST_SKIPPED_KEY, "meta", ROLLED_KEY)},
                      device)
        if ROLLED_KEY in batch:
            b[ROLLED_KEY] = to_device(batch[ROLLED_KEY], device)
        own, rolled, num_tokens, texts = task.eval_batch(b, max_new, synced=synced)
        if not real or full:
            continue
        bar.update(len(meta))
        own_l, rolled_l, tok_l = own.tolist(), rolled.tolist(), num_tokens.tolist()
        for i, m in enumerate(meta):
            if max_samples is not None and len(records) >= max_samples:
                break
            sums.loss_sum += own_l[i]
            sums.tokens += tok_l[i]
            # paired by the loader (each sample with a fixed other one of its shard), else with the
            # next sample of the batch, which a batch of one does not have
            if m.get("paired", len(own_l) > 1):
                sums.gap_own_sum += own_l[i]
                sums.gap_rolled_sum += rolled_l[i]
                sums.gap_tokens += tok_l[i]
            pred = task.postprocess(texts[i])
            records.append({
                "key": m["key"], "shard": m["url"], "text": texts[i], "prediction": pred, "reference": m["reference"],
                "loss": own_l[i] / max(1, tok_l[i]), "image_gap": (rolled_l[i] - own_l[i]) / max(1, tok_l[i]),
                "scores": task.sample_scores(pred, m["reference"]),
            })
            if len(records) <= keep_images:
                records[-1]["image"] = task.page_image(batch, i)
    bar.close()
    return records, sums


def gather(records: list[dict[str, Any]], sums: EvalSums) -> tuple[list[dict[str, Any]], EvalSums]:
    """All ranks' records (unique by shard and key, sorted) and summed totals, on every rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sorted(records, key=lambda r: (r["shard"], r["key"])), sums
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (records, sums))
    total = EvalSums()
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for recs, s in parts:
        total.add(s)
        for r in recs:
            seen.setdefault((r["shard"], r["key"]), r)
    return [seen[k] for k in sorted(seen)], total


def summarize(task: EngineTask, records: list[dict[str, Any]], sums: EvalSums, max_skip_fraction: float) -> dict[str, Any]:
    """Dataset metrics: the task's scores, token loss, image_gap, counts."""
    skipped = sum(sums.skipped.values())
    if not records:
        reasons = dict(sums.skipped) or "see the skipped-sample warnings above"
        latest = f"; latest: {sums.last_skipped}" if sums.last_skipped else ""
        raise ValueError(f"no readable sample in --data.eval.source ({skipped} skipped: {reasons}{latest}); "
                         f"check that the shards are tar files of samples")
    read = len(records) + skipped
    if read and skipped > max_skip_fraction * read:
        raise RuntimeError(f"{skipped} of {read} eval samples were unusable ({dict(sums.skipped)}); "
                           f"latest: {sums.last_skipped}")
    metrics: dict[str, Any] = {"num_samples": len(records), "skipped": skipped}
    if records:
        metrics.update(task.score([r["prediction"] for r in records], [r["reference"] for r in records]))
    metrics["loss"] = sums.loss_sum / max(1, sums.tokens)
    if sums.gap_tokens:  # else no sample had a partner (every shard holds one sample): no gap, never NaN
        metrics["image_gap"] = (sums.gap_rolled_sum - sums.gap_own_sum) / sums.gap_tokens
    return metrics


def evaluate_source(
    task: EngineTask, batches: Iterable[dict[str, Any]], device: torch.device, cfg: Any, world_size: int,
    synced: bool = False, keep_images: int = 0, progress: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One whole evaluation on `cfg` (a DataEvalConfig): each rank its share of
    --data.eval.num_samples, records gathered on every rank, metrics. Returns (records, metrics).
    `progress`: a bar of this rank's samples, with log lines written above it."""
    share = math.ceil(cfg.num_samples / world_size) if cfg.num_samples else None
    with logs_above_bar(progress):
        records, sums = gather(*evaluate(task, batches, device, max_samples=share, synced=synced,
                                         keep_images=keep_images, progress=progress))
    if cfg.num_samples:
        records = records[: cfg.num_samples]
    metrics = summarize(task, records, sums, cfg.max_skip_fraction)
    metrics.update(part_scores(task, records, cfg.source))
    return records, metrics


def part_name(part: str) -> str:
    """'shards/sroie-{000000..000007}.tar' or 'shards/sroie-000003.tar' -> 'sroie'."""
    base = os.path.basename(part.strip().removeprefix("pipe:"))
    return re.sub(r"[-_]\d+$", "", re.split(r"[-_.]?\{|\.tar|\s", base)[0]) or "data"


def source_part_names(source: str) -> list[tuple[str, list[str]]]:
    """(name, shard URLs) of each '::'-separated part of an eval source, named after its first
    shard ('shards/real_lines-{000000..000003}.tar' -> 'real_lines'; repeated names get -2, -3)."""
    from pixparse.data.loader import expand_source_groups

    parts, seen = [], {}
    for part, urls in zip(source.split("::"), expand_source_groups(source)):
        name = part_name(part)
        seen[name] = seen.get(name, 0) + 1
        parts.append((name if seen[name] == 1 else f"{name}-{seen[name]}", urls))
    return parts


def part_scores(task: EngineTask, records: list[dict[str, Any]], source: str) -> dict[str, float]:
    """With several '::'-separated eval sources, the task's metrics on each one as '<name>/<metric>'
    (a held-out rendered set and real crops, scored apart in one evaluation)."""
    parts = source_part_names(source)
    if len(parts) < 2:
        return {}
    out: dict[str, float] = {}
    for name, urls in parts:
        shards = set(urls)
        mine = [r for r in records if r["shard"] in shards]
        if mine:
            scores = task.score([r["prediction"] for r in mine], [r["reference"] for r in mine])
            out.update({f"{name}/{k}": v for k, v in scores.items()})
            out[f"{name}/num_samples"] = len(mine)
    return out
