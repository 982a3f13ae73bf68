"""Plot saved bench_train results: samples/s of each variant and its step-time ratio against the
plain loop, one group per result file (model, batch, CPU/GPU, date), as one PNG.

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
        r["label"] = f"{a['model']} b{a['batch_size']}\n{device[:28]}\n{r.get('when', '')[:10]}"
        runs.append(r)
    return runs


def plot(runs: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({v for r in runs for v in r["median_step_s"]}, key=lambda v: (v.split("_")[1], v))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(6 + 2.5 * len(runs), 4.5))
    width = 0.8 / max(1, len(variants))
    for i, v in enumerate(variants):
        xs = [j + i * width for j in range(len(runs))]
        sps = [r["args"]["batch_size"] / r["median_step_s"][v] if v in r["median_step_s"] else 0 for r in runs]
        ratio = []
        for r in runs:
            base = r["median_step_s"].get(f"plain_{v.split('_')[1]}")
            ratio.append(r["median_step_s"][v] / base if base and v in r["median_step_s"] else 0)
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
