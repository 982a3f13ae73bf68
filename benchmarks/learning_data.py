"""Dataset folders for the learning checks, in the official layouts the shard writers read
(`python -m pixparse.app.write cord|docvqa ...`), built from the real data in ../shared/data.

    python benchmarks/learning_data.py cord SROIE_FOLDER OUT [--count 8]
        CORD (Hugging Face layout: json/<id>.json with gt_parse + valid_line, image/<id>.jpg) from
        SROIE receipts: gt_parse = {"store": {"nm": company, "addr": [address parts]},
        "total": {"total_price": total, "date": date}} (nested groups and a list, as CORD has),
        valid_line = the receipt's OCR lines with their quads.
    python benchmarks/learning_data.py docvqa FUNSD_KV_FOLDER FUNSD_FOLDER OUT [--images 4]
        DocVQA (<OUT>/train.json {"data": [...]}, images under <OUT>/documents) from FUNSD
        question/answer pairs: the first N training forms (sorted by file name) that have exactly
        one "date:" and one "from:" answer of at most 24 characters, both questions each. Every
        question is asked of several forms and every form gets several questions, so neither the
        question nor the page alone gives the answer.
"""
import argparse
import json
import os
import shutil
from collections import defaultdict


def cord_from_sroie(sroie: str, out: str, count: int) -> int:
    os.makedirs(os.path.join(out, "json"), exist_ok=True)
    os.makedirs(os.path.join(out, "image"), exist_ok=True)
    stems = sorted(os.path.splitext(n)[0] for n in os.listdir(os.path.join(sroie, "key")))[:count]
    for stem in stems:
        with open(os.path.join(sroie, "key", f"{stem}.json")) as f:
            key = json.load(f)
        parts = [p.strip() for p in key["address"].split(",") if p.strip()]
        gt_parse = {"store": {"nm": key["company"], "addr": parts if len(parts) > 1 else key["address"]},
                    "total": {"total_price": key["total"], "date": key["date"]}}
        lines = []
        with open(os.path.join(sroie, "box", f"{stem}.csv"), encoding="utf-8", errors="replace") as f:
            for row in f:
                cells = row.rstrip("\r\n").split(",", 8)
                if len(cells) == 9 and cells[8].strip():
                    quad = dict(zip(("x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4"), map(int, cells[:8])))
                    lines.append({"words": [{"quad": quad, "text": cells[8]}]})
        with open(os.path.join(out, "json", f"{stem}.json"), "w") as f:
            json.dump({"ground_truth": json.dumps({"gt_parse": gt_parse, "valid_line": lines})}, f)
        shutil.copy(os.path.join(sroie, "img", f"{stem}.jpg"), os.path.join(out, "image", f"{stem}.jpg"))
    return len(stems)


def docvqa_from_funsd(kv: str, funsd: str, out: str, images: int) -> int:
    by_image: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    with open(os.path.join(kv, "funsd_kv_pairs.jsonl")) as f:
        for row in map(json.loads, f):
            if row["split"] == "training_data":
                by_image[row["image"]][row["question_text"].strip().lower()].append(row["answer_text"].strip())
    records = []
    os.makedirs(os.path.join(out, "documents"), exist_ok=True)
    for image in sorted(by_image):
        qa = by_image[image]
        picked = {q: qa.get(q, []) for q in ("date:", "from:")}
        if not all(len(a) == 1 and 0 < len(a[0]) <= 24 for a in picked.values()):
            continue
        name = os.path.basename(image)
        shutil.copy(os.path.join(funsd, image), os.path.join(out, "documents", name))
        for q, answers in picked.items():
            records.append({"questionId": len(records), "question": q.capitalize(),
                            "image": f"documents/{name}", "answers": answers})
        if len(records) == 2 * images:
            break
    with open(os.path.join(out, "train.json"), "w") as f:
        json.dump({"data": records}, f, indent=1)
    return len(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    cord = sub.add_parser("cord")
    cord.add_argument("sroie")
    cord.add_argument("out")
    cord.add_argument("--count", type=int, default=8)
    qa = sub.add_parser("docvqa")
    qa.add_argument("kv")
    qa.add_argument("funsd")
    qa.add_argument("out")
    qa.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    if args.what == "cord":
        print(f"cord: {cord_from_sroie(args.sroie, args.out, args.count)} receipts in {args.out}")
    else:
        print(f"docvqa: {docvqa_from_funsd(args.kv, args.funsd, args.out, args.images)} questions in {args.out}")


if __name__ == "__main__":
    main()
