"""Loader throughput: pixparse's fused pipeline vs a plain reference pipeline vs decode only,
on shards made from the real pages in shared/data, at cruller_base resolution (576x448 gray).

    python benchmarks/bench_loader.py --data ../shared/data --workers 2 --repeats 3

Formats (the benchmark writes the TIFF and PDF variants of the real pages itself):
  docbank_jpg   DocBank arXiv pages, JPEG ~1654x2339
  sroie_jpg     SROIE receipts, JPEG
  docbank_pdf   the DocBank pages as scanned-JPEG PDFs (one image per page)
  funsd_tif     FUNSD forms binarized, bilevel CCITT G4 TIFF (IDL-like)
  funsd_png     FUNSD forms, grayscale PNG

Pipelines, run interleaved (plain, pixparse, decode, plain, ...) for `--repeats` rounds:
  plain     webdataset .decode("pil") (full decode to RGB) -> torchvision Resize (bicubic,
            antialias) to fit -> grayscale -> float tensor, pad -> per-sample tokenizer padded to
            max length -> default_collate. PDFs: PDFium render at 200 dpi first.
  pixparse  pixparse.data.loader with the pretraining task's preprocess (draft JPEG decode,
            embedded-JPEG PDF pages, one resize, uint8, dynamic padding).
  decode    tar read + full PIL decode of the image, nothing else.
Reported: samples/s and MB/s (shard bytes) with N workers, CPU ms/sample in one process
(num_workers=0: what one worker costs), speed-up plain -> pixparse, PSNR of pixparse's pixels
against a full-size LANCZOS downscale, and whether token ids equal the plain pipeline's.
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
from torch.utils.data import DataLoader, IterableDataset, default_collate

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pixparse.data.config import DataLoaderConfig  # noqa: E402
from pixparse.data.decode import IMAGE_EXTS, decode_document_page, fit_size  # noqa: E402
from pixparse.data.formats import read_docbank, read_funsd, read_sroie  # noqa: E402
from pixparse.data.loader import create_loader  # noqa: E402
from pixparse.data.write import write_shards  # noqa: E402
from pixparse.tasks.config import TaskConfig  # noqa: E402
from pixparse.tasks.pretrain import PRETRAIN_PROMPT, TaskCrullerPretrain  # noqa: E402

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
        pattern = os.path.join(out, name, f"{name}-%06d.tar")
        existing = sorted(f for f in os.listdir(os.path.dirname(pattern))) if os.path.isdir(os.path.dirname(pattern)) else []
        if existing:
            shards[name] = [os.path.join(out, name, f) for f in existing]
        else:
            shards[name] = write_shards(_copies(make(), copies), pattern,
                                        samples_per_shard=max(1, max_samples * copies // 4))
    return shards


# ---------------------------------------------------------------- plain reference pipeline
class PlainPipeline(IterableDataset):
    def __init__(self, urls: list[str], tokenizer, decode_only: bool = False) -> None:
        self.urls, self.tokenizer, self.decode_only = urls, tokenizer, decode_only

    def _pdf_to_pil(self, data: bytes) -> Image.Image:
        import pypdfium2 as pdfium

        return pdfium.PdfDocument(data)[0].render(scale=200 / 72).to_pil()

    def __iter__(self):
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        urls = self.urls  # webdataset splits shards over workers itself
        if self.decode_only:
            for s in wds.WebDataset(urls, shardshuffle=False):
                ext = next(e for e in IMAGE_EXTS if e in s)
                if ext == "pdf":
                    self._pdf_to_pil(s[ext])
                else:
                    Image.open(io.BytesIO(s[ext])).load()
                yield {"n": 1}
            return
        ds = wds.WebDataset(urls, shardshuffle=False).decode("pil")
        for s in ds:
            ext = next(e for e in IMAGE_EXTS if e in s)
            image = self._pdf_to_pil(s[ext]) if ext == "pdf" else s[ext]
            anno = s["json"]  # decoded by webdataset
            text = "\n".join(t for t in anno["pages"][0]["lines"]["text"] if t.strip())
            w, h = image.size
            new_w, new_h = fit_size((w, h), (H, W))
            image = TF.resize(image, [new_h, new_w], interpolation=InterpolationMode.BICUBIC, antialias=True)
            x = TF.to_tensor(TF.rgb_to_grayscale(image))
            x = torch.nn.functional.pad(x, (0, W - new_w, 0, H - new_h), value=1.0)
            enc = self.tokenizer(PRETRAIN_PROMPT + text, max_length=MAX_LENGTH, truncation=True,
                                 padding="max_length", add_special_tokens=False, return_tensors="pt")
            yield {"image": x, "input_ids": enc.input_ids[0], "attention_mask": enc.attention_mask[0]}


def run_plain(urls, tokenizer, workers, decode_only=False) -> tuple[int, float]:
    loader = DataLoader(PlainPipeline(urls, tokenizer, decode_only), batch_size=BATCH, num_workers=workers,
                        collate_fn=default_collate)
    start = time.perf_counter()
    n = sum(len(b["n"]) if decode_only else b["image"].shape[0] for b in loader)
    elapsed = time.perf_counter() - start
    expected = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False))
    assert n == expected, f"plain pipeline read {n} of {expected} samples"
    return n, elapsed


def run_pixparse(urls, task, workers, num_samples) -> tuple[int, float]:
    cfg = DataLoaderConfig(source="::".join(urls), batch_size=BATCH, num_samples=num_samples,
                           num_workers=workers, shuffle_buffer=0, max_skip_fraction=1.0)
    loader = create_loader(cfg, task.preprocess(cfg), task.collate(cfg),
                           num_batches=math.ceil(num_samples / BATCH), rank=0, world_size=1, seed=0)
    loader.set_interval(0)
    start = time.perf_counter()
    n = sum(b["image"].shape[0] for b in loader)
    elapsed = time.perf_counter() - start
    assert n >= num_samples, f"pixparse loader gave {n} of {num_samples} samples"
    return n, elapsed


# ---------------------------------------------------------------- quality checks
def quality(urls, task, tokenizer, max_checks: int = 8) -> tuple[float, bool]:
    """Mean PSNR (dB) of pixparse's pixels vs a full-size decode + LANCZOS downscale, and whether
    the token ids match the plain pipeline's (before padding)."""
    prep = task.preprocess(DataLoaderConfig(source="x", num_samples=1))
    psnrs, same_ids = [], True
    for i, s in enumerate(wds.WebDataset(urls, shardshuffle=False)):
        if i >= max_checks:
            break
        out = prep(s, random.Random(0))[0]
        ext = next(e for e in IMAGE_EXTS if e in s)
        if ext == "pdf":
            import pypdfium2 as pdfium

            full = pdfium.PdfDocument(s[ext])[0].render(scale=300 / 72).to_pil()
        else:
            full = Image.open(io.BytesIO(s[ext]))
        full = full.convert("L")
        new_w, new_h = fit_size(full.size, (H, W))
        ref = np.asarray(full.resize((new_w, new_h), Image.Resampling.LANCZOS), dtype=np.float64)
        ours = out["image"][0, :new_h, :new_w].numpy().astype(np.float64)
        mse = float(((ours - ref) ** 2).mean())
        psnrs.append(10 * math.log10(255**2 / max(mse, 1e-10)))
        page = decode_document_page(s, "first", random.Random(0))
        plain_ids = tokenizer(PRETRAIN_PROMPT + page.text, max_length=MAX_LENGTH, truncation=True,
                              add_special_tokens=False).input_ids
        ours_ids = out["input_ids"]
        # ours ends with eos; the plain pipeline truncates the prompt+text to MAX_LENGTH without one
        match = ours_ids[:-1] == plain_ids or (len(plain_ids) == MAX_LENGTH and ours_ids[:-1] == plain_ids[:-1])
        if not match:
            print(f"token ids differ for {s['__key__']}: {len(ours_ids)} vs {len(plain_ids)}", file=sys.stderr)
        same_ids &= match
    return statistics.mean(psnrs), same_ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    p.add_argument("--shards", default=os.path.join(tempfile.gettempdir(), "pixparse_bench_shards"))
    p.add_argument("--tokenizer", default=None, help="default: <data>/tokenizers/mistral_tokenizer.model.v1")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max_samples", type=int, default=48)
    p.add_argument("--copies", type=int, default=4, help="times each real page is repeated in the shards")
    p.add_argument("--formats", nargs="*", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)  # like a loader worker; the main process only collects batches
    tok_path = args.tokenizer or os.path.join(args.data, "tokenizers", "mistral_tokenizer.model.v1")
    tok_copy = os.path.join(args.shards, "tokenizer.model")  # create_tokenizer wants a .model name
    os.makedirs(args.shards, exist_ok=True)
    if not os.path.isfile(tok_copy):
        with open(tok_path, "rb") as f, open(tok_copy, "wb") as g:
            g.write(f.read())
    task = TaskCrullerPretrain(TaskConfig(model_name="cruller_base", tokenizer=tok_copy, max_length=MAX_LENGTH))
    tokenizer = task.tokenizer
    shards = build_shards(args.data, args.shards, args.max_samples, args.copies)
    rows = []
    for name, urls in shards.items():
        if args.formats and name not in args.formats:
            continue
        mb = sum(os.path.getsize(u) for u in urls) / 1e6
        n_total = sum(1 for _ in wds.WebDataset(urls, shardshuffle=False))
        times = {"plain": [], "pixparse": [], "decode": []}
        for _ in range(args.repeats):
            times["plain"].append(run_plain(urls, tokenizer, args.workers)[1])
            times["pixparse"].append(run_pixparse(urls, task, args.workers, n_total)[1])
            times["decode"].append(run_plain(urls, tokenizer, args.workers, decode_only=True)[1])
        cpu_plain = run_plain(urls, tokenizer, 0)[1] / n_total * 1e3
        cpu_ours = run_pixparse(urls, task, 0, n_total)[1] / n_total * 1e3
        med = {k: statistics.median(v) for k, v in times.items()}
        psnr, same_ids = quality(urls, task, tokenizer)
        rows.append({
            "format": name, "samples": n_total, "shard_mb": round(mb, 1), "workers": args.workers,
            **{f"{k}_samples_per_s": round(n_total / t, 1) for k, t in med.items()},
            **{f"{k}_mb_per_s": round(mb / t, 1) for k, t in med.items()},
            "speedup": round(med["plain"] / med["pixparse"], 2),
            "plain_cpu_ms_per_sample": round(cpu_plain, 1), "pixparse_cpu_ms_per_sample": round(cpu_ours, 1),
            "cpu_speedup": round(cpu_plain / cpu_ours, 2),
            "psnr_db_vs_lanczos": round(psnr, 1), "same_token_ids": same_ids,
        })
    print(f"loader benchmark: {H}x{W} gray, batch {BATCH}, {args.workers} workers, median of {args.repeats} "
          f"interleaved rounds; CPU ms/sample in one process")
    head = f"{'format':<12} {'n':>4} {'plain s/s':>9} {'ours s/s':>9} {'decode s/s':>10} {'ours MB/s':>9} " \
           f"{'x wall':>6} {'plain ms':>8} {'ours ms':>8} {'x cpu':>6} {'PSNR dB':>7} {'ids':>4}"
    print(head)
    for r in rows:
        print(f"{r['format']:<12} {r['samples']:>4} {r['plain_samples_per_s']:>9} {r['pixparse_samples_per_s']:>9} "
              f"{r['decode_samples_per_s']:>10} {r['pixparse_mb_per_s']:>9} {r['speedup']:>6} "
              f"{r['plain_cpu_ms_per_sample']:>8} {r['pixparse_cpu_ms_per_sample']:>8} {r['cpu_speedup']:>6} "
              f"{r['psnr_db_vs_lanczos']:>7} {'same' if r['same_token_ids'] else 'DIFF':>4}")
    print(json.dumps({"bench": "loader", "height": H, "width": W, "batch_size": BATCH, "rows": rows}))


if __name__ == "__main__":
    main()
