"""The learning check's field_f1 curve: the eval app's metrics of the last checkpoint plus, from the
run's metrics.jsonl, field_f1 after each interval and the steps it took to read every field.

    python benchmarks/learning_curve.py EVAL_OUT METRICS_JSONL   # prints one JSON object

`steps_to_field_f1`: the first evaluation at which every field of every receipt was read;
`steps_to_field_f1_held`: the first from which every later one read them all too (null if none).
"""
import json
import sys


def field_f1_curve(metrics: dict, records: list[dict]) -> dict:
    curve = [[r["step"], round(r["eval/field_f1"], 4)] for r in records if "eval/field_f1" in r]
    held = None
    for step, f1 in reversed(curve):
        if f1 != 1.0:
            break
        held = step
    first = next((step for step, f1 in curve if f1 == 1.0), None)
    return {**metrics, "field_f1_curve": curve, "steps_to_field_f1": first, "steps_to_field_f1_held": held}


def main(eval_out: str, metrics_jsonl: str) -> None:
    with open(eval_out) as f:
        metrics = json.loads(f.read().strip().splitlines()[-1])
    with open(metrics_jsonl) as f:
        records = [json.loads(line) for line in f if line.strip()]
    print(json.dumps(field_f1_curve(metrics, records)))


if __name__ == "__main__":
    main(*sys.argv[1:])
