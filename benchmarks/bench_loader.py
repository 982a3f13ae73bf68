"""Loader throughput: pixparse's fused pipeline (decode fast and exact) vs a competent reference
pipeline vs decode only, on shards made from the real pages in shared/data, at cruller_base
resolution (576x448 gray), with the pixels' PSNR on every side.

    python benchmarks/bench_loader.py --data ../shared/data --workers 2 --repeats 3

Formats (the benchmark writes the TIFF and PDF variants of the real pages itself):
  docbank_jpg   DocBank arXiv pages, JPEG ~1654x2339
  sroie_jpg     SROIE receipts, JPEG
  docbank_pdf   the DocBank pages as scanned-JPEG PDFs (one image per page)
  funsd_tif     FUNSD forms binarized, bilevel CCITT G4 TIFF (IDL-like)
  funsd_png     FUNSD forms, grayscale PNG

Pipelines, run interleaved (plain, pixparse, decode, plain, ...) for `--repeats` rounds:
  plain     what a competent user writes: webdataset, PIL decode straight to gray (JPEG: libjpeg's
            grayscale output, no colour conversion), torchvision bicubic antialiased resize of
            the one channel to fit, white pad, uint8; PDFs rendered by PDFium in gray at twice the
            scale that fits, then resized the same way; per-sample tokenizer, text padded per
            batch to its longest.
  pixparse  pixparse.data.loader with the pretraining task's preprocess, --data.train.decode fast
            (JPEGs and scanned PDF pages drafted at a reduced DCT scale) and exact (full decode);
            both resize with torchvision's antialiased bicubic (uint8), per-batch text padding.
  decode    tar read + full PIL decode of the image, nothing else.
Reported: samples/s with N workers (and the shards' MB), CPU ms/sample in one process (the
per-sample work of the reference and of pixparse's preprocess, tar read excluded: what one worker
costs), speed-up plain -> pixparse, PSNR of each pipeline's pixels against a full-size decode +
LANCZOS downscale, and whether token ids equal the plain pipeline's.
A human table first, one JSON line last.
"""
import argparse
import io
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pixparse.data.config import DataLoaderConfig  # noqa: E402
from pixparse.data.decode import IMAGE_EXTS, fit_size  # noqa: E402
from pixparse.data.formats import read_docbank, read_funsd, read_sroie  # noqa: E402
from pixparse.data.loader import create_loader  # noqa: E402
from pixparse.data.write import write_shards  # noqa: E402
from pixparse.tasks.config import TaskConfig  # noqa: E402
from pixparse.tasks.pretrain import PRETRAIN_PROMPT, TaskReadPretrain  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import _env_info, save_result  # noqa: E402

H, W = 576, 448
BATCH = 8
MAX_LENGTH = 512


# ---------------------------------------------------------------- shards
def _reencode(samples, convert):
    for s in samples:
        ext = next(e for e in IMAGE_EXTS if e in s)
        new_ext, data = convert(Image.open(io.BytesIO(s[ext])))
        out = {k: v for k, v in s.items() if k != ext}
        out[new_ext] = data
        yield out


def _to_pdf(image):
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PDF", resolution=200, quality=90)  # JPEG inside
    return "pdf", buf.getvalue()


def _to_g4(image):
    buf = io.BytesIO()
    image.convert("L").point(lambda v: 255 if v > 160 else 0).convert("1").save(
        buf, format="TIFF", compression="group4")
    return "tif", buf.getvalue()


def _copies(samples, copies: int):
    """Each sample `copies` times under new keys: longer runs from few real pages, so worker
    start-up and the loader's prefetch do not dominate the timing."""
    samples = list(samples)
    for c in range(copies):
        for s in samples:
            yield {**s, "__key__": f"{s['__key__']}_c{c}"}


def build_shards(data: str, out: str, max_samples: int, copies: int = 1) -> dict[str, list[str]]:
    funsd = [os.path.join(data, "funsd", d) for d in ("testing_data", "training_data")]

    def take(gen):
        for i, s in enumerate(gen):
            if i >= max_samples:
                return
            yield s

    def funsd_all():
        for root in funsd:
            yield from read_funsd(root)

    sources = {
        "docbank_jpg": lambda: take(read_docbank(os.path.join(data, "docbank_samples"))),
        "sroie_jpg": lambda: take(read_sroie(os.path.join(data, "sroie"))),
        "docbank_pdf": lambda: _reencode(take(read_docbank(os.path.join(data, "docbank_samples"))), _to_pdf),
        "funsd_tif": lambda: _reencode(take(funsd_all()), _to_g4),
        "funsd_png": lambda: take(funsd_all()),
    }
    shards = {}
    for name, make in sources.items():
        # shards of other --max_samples / --copies are never reused
        pattern = os.path.join(out, f"m{max_samples}_c{copies}", name, f"{name}-%06d.tar")
        existing = sorted(f for f in os.listdir(os.path.dirname(pattern))) if os.path.isdir(os.path.dirname(pattern)) else []
        if existing:
            shards[name] = [os.path.join(os.path.dirname(pattern), f) for f in existing]
        else:
            shards[name] = write_shards(_copies(make(), copies), pattern,
                                        samples_per_shard=max(1, max_samples * copies // 4))
    return shards


# ---------------------------------------------------------------- the competent reference pipeline
def reference_image(data: bytes, ext: str) -> torch.Tensor:
    """Page bytes -> (1, H, W) uint8: gray decode, bicubic antialiased fit, white pad."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    fit = None
    if ext == "pdf":
        import pypdfium2 as pdfium

        page = pdfium.PdfDocument(data)[0]
        w_pt, h_pt = page.get_size()
        fit = fit_size((w_pt, h_pt), (H, W))  # the output size from the page size, not the render's
        # twice the fitting scale, then the antialiased resize: rendering a scan straight at the
        # small size samples it without antialiasing (26.8-32.3 dB against the Lanczos fit)
        image = page.render(scale=2 * min(H / h_pt, W / w_pt), grayscale=True).to_pil().convert("L")
    else:
        image = Image.open(io.BytesIO(data))
        if image.format == "JPEG":
            image.draft("L", image.size)  # luminance only, full size: no colour conversion
        image = image.convert("L")
    x = TF.pil_to_tensor(image)  # (1, h, w) uint8
    new_w, new_h = fit or fit_size((x.shape[2], x.shape[1]), (H, W))
    if (new_h, new_w) != tuple(x.shape[1:]):
        x = TF.resize(x, [new_h, new_w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return torch.nn.functional.pad(x, (0, W - new_w, 0, H - new_h), value=255)


def plain_sample(s: dict, tokenizer) -> dict:
    """The reference pipeline's work on one sample: page text, tokens, pixels."""
    ext = next(e for e in IMAGE_EXTS if e in s)
    anno = json.loads(s["json"])
    text = "\n".join(t for t in anno["pages"][0]["lines"]["text"] if t.strip())
    ids = tokenizer(PRETRAIN_PROMPT + text, max_length=MAX_LENGTH, truncation=True,
                    add_special_tokens=False).input_ids
    return {"image": reference_image(s[ext], ext), "input_ids": ids}


class PlainPipeline(IterableDataset):
    def __init__(self, urls: list[str], tokenizer, decode_only: bool = False) -> None:
        self.urls, self.tokenizer, self.decode_only = urls, tokenizer, decode_only

    def __iter__(self):
        urls = self.urls  # webdataset splits shards over workers itself
        for s in wds.WebDataset(urls, shardshuffle=False):
            if self.decode_only:
                ext = next(e for e in IMAGE_EXTS if e in s)
                if ext == "pdf":  # rendering is the decode: at the scale that fits, in gray
                    reference_image(s[ext], ext)
                else:
                    Image.open(io.BytesIO(s[ext])).load()
                yield {"n": 1}
                continue
            yield plain_sample(s, self.tokenizer)


def collate_reference(samples: list[dict]) -> dict:
    """Stack images; pad ids per batch to the longest."""
    if "n" in samples[0]:
        return {"n": [1] * len(samples)}
    longest = max(len(s["input_ids"]) for s in samples)
    ids = torch.zeros((len(samples), longest), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(samples):
        ids[i, :len(s["input_ids"])] = torch.tensor(s["input_ids"])
        mask[i, :len(s["input_ids"])] = 1
    return {"image": torch.stack([s["image"] for s in samples]), "input_ids": ids, "attention_mask": mask}


def run_plain(urls, tokenizer, workers, decode_only=False) -> tuple[int, float]:
    loader = DataLoader(PlainPipeline(urls, tokenizer, decode_only), batch_size=BATCH, num_workers=workers,
                        collate_fn=collate_reference)
    start = time.perf_counter()
    n = sum(len(b["n"]) if decode_only else b["image"].shape[0] for b in loader)
    elapsed = time.perf_counter() - start
    expected = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False))
    assert n == expected, f"plain pipeline read {n} of {expected} samples"
    return n, elapsed


def run_pixparse(urls, task, workers, num_samples, decode: str = "fast") -> tuple[int, float]:
    cfg = DataLoaderConfig(source="::".join(urls), batch_size=BATCH, num_samples=num_samples,
                           num_workers=workers, shuffle_buffer=0, max_skip_fraction=1.0, decode=decode)
    loader = create_loader(cfg, task.preprocess(cfg), task.collate(cfg),
                           num_batches=math.ceil(num_samples / BATCH), rank=0, world_size=1, seed=0)
    loader.set_interval(0)
    start = time.perf_counter()
    n = sum(b["image"].shape[0] for b in loader)
    elapsed = time.perf_counter() - start
    assert n >= num_samples, f"pixparse loader gave {n} of {num_samples} samples"
    return n, elapsed


def _preprocessors(task) -> dict:
    """pixparse's per-sample preprocess with each decode mode."""
    return {m: task.preprocess(DataLoaderConfig(source="x", num_samples=1, decode=m)) for m in ("fast", "exact")}


def worker_ms(urls, task, tokenizer, repeats: int, max_samples: int = 40) -> dict[str, float]:
    """CPU ms per sample in one process (what one loader worker spends; tar read excluded):
    the reference's per-sample work and pixparse's preprocess, fast and exact, interleaved,
    median of `repeats` passes over the same samples held in memory."""
    samples = [s for _, s in zip(range(max_samples), wds.WebDataset(urls, shardshuffle=False))]
    preps = _preprocessors(task)
    work = {"plain": lambda s: plain_sample(s, tokenizer),
            "fast": lambda s: preps["fast"](s, random.Random(0)),
            "exact": lambda s: preps["exact"](s, random.Random(0))}
    times: dict[str, list[float]] = {k: [] for k in work}
    for _ in range(repeats + 1):  # the first pass warms up and is dropped
        for k, fn in work.items():
            start = time.perf_counter()
            for s in samples:
                fn(s)
            times[k].append((time.perf_counter() - start) / len(samples) * 1e3)
    return {k: statistics.median(v[1:]) for k, v in times.items()}


# ---------------------------------------------------------------- quality checks
def _psnr(ours: np.ndarray, ref: np.ndarray) -> float:
    mse = float(((ours.astype(np.float64) - ref) ** 2).mean())
    return 10 * math.log10(255**2 / max(mse, 1e-10))


def quality(urls, task, tokenizer, max_checks: int = 8) -> tuple[dict[str, float], bool]:
    """Mean PSNR (dB) of each pipeline's pixels (pixparse fast and exact, the reference) vs a
    full-size decode + LANCZOS downscale, and whether pixparse's token ids match the reference's."""
    preps = _preprocessors(task)
    psnrs: dict[str, list[float]] = {"fast": [], "exact": [], "plain": []}
    same_ids = True
    for i, s in enumerate(wds.WebDataset(urls, shardshuffle=False)):
        if i >= max_checks:
            break
        outs = {m: prep(s, random.Random(0))[0] for m, prep in preps.items()}
        out = outs["fast"]
        ext = next(e for e in IMAGE_EXTS if e in s)
        if ext == "pdf":
            import pypdfium2 as pdfium

            full = pdfium.PdfDocument(s[ext])[0].render(scale=300 / 72).to_pil()
        else:
            full = Image.open(io.BytesIO(s[ext]))
        full = full.convert("L")
        new_w, new_h = fit_size(full.size, (H, W))
        ref = np.asarray(full.resize((new_w, new_h), Image.Resampling.LANCZOS), dtype=np.float64)
        for m, o in outs.items():
            psnrs[m].append(_psnr(o["image"][0, :new_h, :new_w].numpy(), ref))
        plain = plain_sample(s, tokenizer)
        psnrs["plain"].append(_psnr(plain["image"][0, :new_h, :new_w].numpy(), ref))
        plain_ids, ours_ids = plain["input_ids"], out["input_ids"]
        # ours ends with eos; the plain pipeline truncates the prompt+text to MAX_LENGTH without one
        match = ours_ids[:-1] == plain_ids or (len(plain_ids) == MAX_LENGTH and ours_ids[:-1] == plain_ids[:-1])
        if not match:
            print(f"token ids differ for {s['__key__']}: {len(ours_ids)} vs {len(plain_ids)}", file=sys.stderr)
        same_ids &= match
    return {m: statistics.mean(v) for m, v in psnrs.items()}, same_ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    p.add_argument("--shards", default=os.path.join(tempfile.gettempdir(), "pixparse_bench_shards"))
    p.add_argument("--tokenizer", default=None, help="default: <data>/tokenizers/mistral_tokenizer.model.v1")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max_samples", type=int, default=60)
    p.add_argument("--copies", type=int, default=12,
                   help="times each real page is repeated in the shards: runs of a few seconds, so worker "
                        "start-up does not decide the ratio (at 4 copies rounds were ~1 s and ratios moved 0.1-0.3)")
    p.add_argument("--formats", nargs="*", default=None)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                   help="folder the results JSON is saved to")
    args = p.parse_args()
    torch.set_num_threads(1)  # like a loader worker; the main process only collects batches
    tok_path = args.tokenizer or os.path.join(args.data, "tokenizers", "mistral_tokenizer.model.v1")
    tok_copy = os.path.join(args.shards, "tokenizer.model")  # create_tokenizer wants a .model name
    os.makedirs(args.shards, exist_ok=True)
    if not os.path.isfile(tok_copy):
        with open(tok_path, "rb") as f, open(tok_copy, "wb") as g:
            g.write(f.read())
    task = TaskReadPretrain(TaskConfig(model_name="cruller_base", tokenizer=tok_copy, max_length=MAX_LENGTH))
    tokenizer = task.tokenizer
    shards = build_shards(args.data, args.shards, args.max_samples, args.copies)
    rows = []
    for name, urls in shards.items():
        if args.formats and name not in args.formats:
            continue
        mb = sum(os.path.getsize(u) for u in urls) / 1e6
        n_total = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False))
        times = {"plain": [], "fast": [], "exact": [], "decode": []}
        for _ in range(args.repeats):  # interleaved: drift hits every pipeline alike
            times["plain"].append(run_plain(urls, tokenizer, args.workers)[1])
            times["fast"].append(run_pixparse(urls, task, args.workers, n_total, "fast")[1])
            times["exact"].append(run_pixparse(urls, task, args.workers, n_total, "exact")[1])
            times["decode"].append(run_plain(urls, tokenizer, args.workers, decode_only=True)[1])
        med = {k: statistics.median(v) for k, v in times.items()}
        psnr, same_ids = quality(urls, task, tokenizer)
        one = worker_ms(urls, task, tokenizer, args.repeats)
        rows.append({
            "format": name, "samples": n_total, "shard_mb": round(mb, 1), "workers": args.workers,
            **{f"{k}_samples_per_s": round(n_total / t, 1) for k, t in med.items()},
            "fast_vs_plain": round(med["plain"] / med["fast"], 2),
            "exact_vs_plain": round(med["plain"] / med["exact"], 2),
            **{f"{k}_psnr_db": round(v, 1) for k, v in psnr.items()},
            **{f"{k}_ms_per_sample_one_process": round(v, 2) for k, v in one.items()},
            "same_token_ids": same_ids,
        })
    print(f"loader benchmark: {H}x{W} gray, batch {BATCH}, {args.workers} workers, median of {args.repeats} "
          f"interleaved rounds; samples/s; PSNR (dB) against a full decode + Lanczos fit; CPU ms per "
          f"sample in one process (one worker's cost)")
    print("| format | n | plain s/s | fast s/s | exact s/s | decode only s/s | fast vs plain | exact vs plain "
          "| PSNR plain / fast / exact | ms/sample plain / fast / exact | token ids |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['samples']} | {r['plain_samples_per_s']} | {r['fast_samples_per_s']} | "
              f"{r['exact_samples_per_s']} | {r['decode_samples_per_s']} | {r['fast_vs_plain']}x | "
              f"{r['exact_vs_plain']}x | {r['plain_psnr_db']} / {r['fast_psnr_db']} / {r['exact_psnr_db']} | "
              + " / ".join(str(r[f"{k}_ms_per_sample_one_process"]) for k in ("plain", "fast", "exact"))
              + f" | {'same' if r['same_token_ids'] else 'DIFF'} |")
    record = {"summary": {r["format"]: {"fast_vs_plain": r["fast_vs_plain"], "exact_vs_plain": r["exact_vs_plain"]}
                          for r in rows},
              "rows": rows, "height": H, "width": W, "batch_size": BATCH, "args": vars(args),
              "command": " ".join(["python", *sys.argv]), **_env_info()}
    save_result(args.out, "bench_loader", record)


if __name__ == "__main__":
    main()
