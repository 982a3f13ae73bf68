"""Plot saved bench_train results: samples/s of each variant and its step-time ratio against the
plain loop, one group per result file (model, batch, CPU/GPU, date), as one PNG. For --paired
results the ratio is the median per-pair ratio and the plain loop's samples/s is from its
ZeRO-2 pairing.

    python benchmarks/plot.py benchmarks/results/bench_train_*.json --out benchmarks/results/bench_train.png
"""
import argparse
import json
import os


def load(paths: list[str]) -> list[dict]:
    runs = []
    for path in paths:
        with open(path) as f:
            r = json.load(f)
        a = r["args"]
        device = r.get("gpu") or r.get("cpu", "?")
        paired = "paired" in r
        omp = f" omp {a['omp_wait_policy']}" if a.get("omp_wait_policy") else ""
        r["label"] = (f"{a['model']} b{a['batch_size']}{' paired' if paired else ''}{omp}\n{device[:28]}\n"
                      f"{r.get('when', '')[:16].replace('T', ' ')}")
        if paired:  # engine and plain loop alternated per step in one process per variant
            pairs = r["paired"]
            plain = pairs.get("zero2_fp32", next(iter(pairs.values())))["plain_s"]
            r["sps"] = {"plain_fp32": a["batch_size"] / plain, **{v: a["batch_size"] / p["engine_s"] for v, p in pairs.items()}}
            r["ratio"] = {"plain_fp32": 1.0, **{v: p["ratio"] for v, p in pairs.items()}}
        else:
            steps = r["median_step_s"]
            r["sps"] = {v: a["batch_size"] / t for v, t in steps.items()}
            r["ratio"] = {v: t / steps[f"plain_{v.split('_')[1]}"] for v, t in steps.items()
                          if f"plain_{v.split('_')[1]}" in steps}
        runs.append(r)
    return runs


def plot(runs: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({v for r in runs for v in r["sps"]}, key=lambda v: (v.split("_")[1], v))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(6 + 2.5 * len(runs), 4.5))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        xs = [j + i * width for j in range(len(runs))]
        sps = [r["sps"].get(v, 0) for r in runs]
        ratio = [r["ratio"].get(v, 0) for r in runs]
        ax1.bar(xs, sps, width, label=v)
        ax2.bar(xs, ratio, width, label=v)
    for ax, title in ((ax1, "samples/s (1 rank)"), (ax2, "step time / plain loop (same dtype)")):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(runs))], [r["label"] for r in runs], fontsize=7)
        ax.set_title(title)
    ax2.axhline(1.0, color="black", linewidth=0.8)
    ax1.set_yscale("log")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="bench_train_*.json files written by benchmarks/bench_train.py")
    p.add_argument("--out", default="benchmarks/results/bench_train.png")
    args = p.parse_args()
    plot(load(args.results), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
