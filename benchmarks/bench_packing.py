"""Packed vs padded patch rows (pix2struct family) on real pages of mixed shapes.

Pages: SROIE receipts, FUNSD forms and DocBank full pages from --data (../shared/data), mixed in
one seeded order. Each page is patched as the loader does (gray, aspect kept, at most
--max_patches patches, never enlarged), then batches of --batch_size pages are collated both
ways: packed (several pages per row of max_patches, block-diagonal attention) and padded (one
page per row at its drawn budget, Pix2Struct's layout; packing also grows each row's pages from
their drawn budgets to fill the row). Reported: the share of padded patch slots, and training
throughput (forward + backward + AdamW of a pix2struct model, plain loop, one process) in real
patch tokens/s, the two layouts interleaved over rounds, median of rounds. Both layouts train on
the same pages with the same text targets. --min_patches draws each page's budget from
[min, max] (NaViT's resolution sampling, --data.train.min_patches in training).

    python benchmarks/bench_packing.py --data ../shared/data --max_patches 2048
    python benchmarks/bench_packing.py --data ../shared/data --max_patches 2048 --min_patches 512
"""
import argparse
import datetime
import glob
import math
import os
import random
import statistics
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, BENCH)

SOURCES = {"receipts (SROIE)": "sroie/**/*.jpg", "forms (FUNSD)": "funsd/**/*.png",
           "full pages (DocBank)": "docbank_samples/*.jpg"}


def load_pages(data: str, per_source: int, patch_size: int, max_patches: int, seed: int,
               min_patches: int | None = None):
    from PIL import Image

    from pixparse.data.patches import PatchPage

    patcher = PatchPage(patch_size, max_patches, "L", exact=True, min_patches=min_patches)
    rng = random.Random(seed)
    pages = []
    for kind, pattern in SOURCES.items():
        files = sorted(glob.glob(os.path.join(data, pattern), recursive=True))[:per_source]
        if not files:
            raise SystemExit(f"no {kind} images under {data}/{pattern}: pass --data ../shared/data")
        for f in files:
            with Image.open(f) as im:
                pages.append((kind, patcher.prepare(im.convert("L"), rng)))
    random.Random(seed).shuffle(pages)
    return pages


def batches(pages, batch_size: int, max_patches: int, patch_size: int, pack: bool, text_len: int, vocab: int):
    import torch

    from pixparse.data.patches import collate_patches

    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(0, len(pages) - batch_size + 1, batch_size):
        items = [{**p, "input_ids": [1, *torch.randint(3, vocab, (text_len,), generator=g).tolist(), 2],
                  "prompt_length": 1} for _, p in pages[i:i + batch_size]]
        out.append(collate_patches(items, pad_id=0, max_patches=max_patches, patch_size=patch_size, pack=pack))
    return out


def build_model(args):
    import torch

    from pixparse.models import create_model, get_model_config

    cfg = get_model_config("pix2struct_tiny")
    cfg.image_encoder.max_patches = args.max_patches
    cfg.image_encoder.model_args = {"patch_size": args.patch_size, "embed_dim": args.width, "depth": args.depth,
                                    "num_heads": args.width // 64, "mlp_ratio": 4.0}
    torch.manual_seed(0)
    return create_model(cfg, 512, 0, 2)


def time_layout(model, opt, data, warmup: int) -> tuple[float, int]:
    """Seconds for one training pass over `data` (every batch once) after `warmup` steps; real
    patches seen."""
    import torch
    import torch.nn.functional as F

    def step(b):
        pixels = {k: b[k] for k in ("patch_pos", "segment", "sample_row", "sample_segment")}
        pixels["patches"] = (b["patches"].float() - 127.5) / 127.5
        logits = model(pixels, b["input_ids"], b["attention_mask"])
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), b["labels"][:, 1:].reshape(-1),
                               ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(warmup):
        step(data[i % len(data)])
    real = 0
    start = time.perf_counter()
    for b in data:
        step(b)
        real += int((b["segment"] > 0).sum())
    return time.perf_counter() - start, real


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(os.path.dirname(BENCH), "..", "shared", "data"))
    p.add_argument("--per_source", type=int, default=24, help="pages taken from each source")
    p.add_argument("--max_patches", type=int, default=2048)
    p.add_argument("--min_patches", type=int, default=None,
                   help="NaViT resolution sampling: each page's budget drawn from [min, max] (unset: max)")
    p.add_argument("--patch_size", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--width", type=int, default=192, help="encoder width (heads of 64)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--text_len", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=os.path.join(BENCH, "results"))
    args = p.parse_args()

    import torch

    from bench_train import _env_info, save_result

    from pixparse.data.patches import patch_grid

    pages = load_pages(args.data, args.per_source, args.patch_size, args.max_patches, seed=0,
                       min_patches=args.min_patches)
    print("pages | patches per page: median, min, max", file=sys.stderr)
    per_kind = {}
    for kind in SOURCES:
        counts = [math.prod(patch_grid(pg["page"].height, pg["page"].width, args.patch_size, pg["budget"]))
                  for k, pg in pages if k == kind]
        per_kind[kind] = {"pages": len(counts), "median_patches": statistics.median(counts),
                          "min_patches": min(counts), "max_patches": max(counts),
                          "padded_share_if_padded": 1 - statistics.mean(counts) / args.max_patches}
    layouts = {}
    for name, pack in (("packed", True), ("padded", False)):
        data = batches(pages, args.batch_size, args.max_patches, args.patch_size, pack, args.text_len, 512)
        slots = sum(b["segment"].numel() for b in data)
        real = sum(int((b["segment"] > 0).sum()) for b in data)
        layouts[name] = {"data": data, "rows": sum(b["segment"].shape[0] for b in data),
                         "padded_share": 1 - real / slots}
    model = build_model(args)
    times = {name: [] for name in layouts}
    for r in range(args.rounds):  # interleaved rounds; a fresh optimizer state per run
        for name, lay in layouts.items():
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            seconds, real = time_layout(model, opt, lay["data"], args.warmup)
            times[name].append(real / seconds)
            print(f"round {r + 1}/{args.rounds} {name}: {real / seconds:.0f} patch tokens/s", file=sys.stderr)
    median = {name: statistics.median(t) for name, t in times.items()}
    mix = ", ".join(f"{v['pages']} {k}" for k, v in per_kind.items())
    print(f"{len(pages)} real pages ({mix}), "
          f"max_patches {args.max_patches}, patch {args.patch_size}, batch {args.batch_size} pages, "
          f"page budget {args.min_patches or args.max_patches}-{args.max_patches} patches, encoder width "
          f"{args.width} depth {args.depth}, one timed pass over all batches, median of {args.rounds} rounds")
    print("| source | patches per page as drawn (median, min-max) | padded share if padded alone |\n|---|---|---|")
    for k, v in per_kind.items():
        print(f"| {k} | {v['median_patches']:.0f} ({v['min_patches']}-{v['max_patches']}) | "
              f"{100 * v['padded_share_if_padded']:.1f}% |")
    print("| layout | rows | padded patch slots | real patch tokens/s |\n|---|---|---|---|")
    for name, lay in layouts.items():
        print(f"| {name} | {lay['rows']} | {100 * lay['padded_share']:.1f}% | {median[name]:.0f} |")
    summary = {"packed_padded_share": round(layouts["packed"]["padded_share"], 4),
               "padded_padded_share": round(layouts["padded"]["padded_share"], 4),
               "packed_vs_padded_tokens_per_s": round(median["packed"] / median["padded"], 3)}
    record = {"summary": summary, "per_source": per_kind, "tokens_per_s_rounds": times, "args": vars(args),
              "command": " ".join(["python", *sys.argv]),
              "when": datetime.datetime.now().isoformat(timespec="seconds"), **_env_info()}
    save_result(args.out, f"bench_packing_m{args.min_patches or args.max_patches}-{args.max_patches}_b{args.batch_size}",
                record)


if __name__ == "__main__":
    main()
