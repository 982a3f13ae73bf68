"""Key-field metrics with Donut's definitions (Kim et al. 2022, section 3.1 / appendix A.2).

Both compare normalized trees: keys sorted, every value a list, empty values dropped, leaves as
stripped strings.
- field_f1: micro F1 over (key path, value) leaf pairs, summed over the dataset; a pair counts
  as found only if it matches exactly.
- ted_accuracy: per sample max(0, 1 - TED(pred, ref) / TED(empty, ref)), averaged, where TED is
  the Zhang-Shasha tree edit distance (zss) with leaves costing their length and a leaf update
  costing its character edit distance (rapidfuzz).
"""
from collections.abc import Sequence
from typing import Any

import zss
from rapidfuzz.distance import Levenshtein

_LEAF = "<leaf>"


def normalize_tree(tree: Any) -> Any:
    """Donut's normalization: dicts -> {key: [values]}, scalar lists -> stripped strings."""
    if not tree:
        return {}
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key in sorted(tree, key=lambda k: (len(str(k)), str(k))):
            value = normalize_tree(tree[key])
            if value:
                out[str(key)] = value if isinstance(value, list) else [value]
        return out
    if isinstance(tree, list):
        if all(isinstance(item, dict) for item in tree):
            return [n for n in (normalize_tree(item) for item in tree) if n]
        return [str(item).strip() for item in tree
                if isinstance(item, (str, int, float)) and str(item).strip()]
    return [str(tree).strip()]


def flatten_tree(tree: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key path, leaf value) pairs of a normalized tree; list items share their key."""
    if isinstance(tree, dict):
        return [pair for k, v in tree.items() for pair in flatten_tree(v, f"{prefix}.{k}" if prefix else k)]
    if isinstance(tree, list):
        return [pair for item in tree for pair in flatten_tree(item, prefix)]
    return [(prefix, tree)]


def field_f1(preds: Sequence[Any], refs: Sequence[Any]) -> float:
    """Micro F1 of leaf pairs over the dataset: tp / (tp + (fp + fn) / 2); 1.0 when neither side
    has any field."""
    tp = fp_fn = 0
    for pred, ref in zip(preds, refs, strict=True):
        remaining = flatten_tree(normalize_tree(ref))
        for pair in flatten_tree(normalize_tree(pred)):
            if pair in remaining:
                remaining.remove(pair)
                tp += 1
            else:
                fp_fn += 1
        fp_fn += len(remaining)
    if tp + fp_fn == 0:
        return 1.0
    return tp / (tp + fp_fn / 2)


def _to_node(tree: Any, label: str = "<root>") -> zss.Node:
    node = zss.Node(label)
    if isinstance(tree, dict):
        for k, v in tree.items():
            node.addkid(_to_node(v, k))
    elif isinstance(tree, list):
        for item in tree:
            node.addkid(_to_node(item, "<subtree>") if isinstance(item, dict) else zss.Node(_LEAF + item))
    return node


def _leaf_text(label: str) -> str | None:
    return label[len(_LEAF):] if label.startswith(_LEAF) else None


def _insert_remove_cost(node: zss.Node) -> int:
    text = _leaf_text(node.label)
    return 1 if text is None else len(text)


def _update_cost(a: zss.Node, b: zss.Node) -> int:
    ta, tb = _leaf_text(a.label), _leaf_text(b.label)
    if ta is not None and tb is not None:
        return Levenshtein.distance(ta, tb)
    if ta is None and tb is None:
        return int(a.label != b.label)
    return 1 + len(ta if ta is not None else tb)


def tree_edit_distance(a: Any, b: Any) -> int:
    """Zhang-Shasha distance between two normalized trees with Donut's costs."""
    return zss.distance(_to_node(a), _to_node(b), get_children=zss.Node.get_children,
                        insert_cost=_insert_remove_cost, remove_cost=_insert_remove_cost,
                        update_cost=_update_cost)


def ted_accuracy_one(pred: Any, ref: Any) -> float:
    """max(0, 1 - TED(pred, ref) / TED(empty, ref)); an empty reference scores 1 only if the
    prediction is empty too."""
    pred, ref = normalize_tree(pred), normalize_tree(ref)
    worst = tree_edit_distance({}, ref)
    if worst == 0:
        return 1.0 if not pred else 0.0
    return max(0.0, 1.0 - tree_edit_distance(pred, ref) / worst)


def ted_accuracy(preds: Sequence[Any], refs: Sequence[Any]) -> float:
    """Mean per-sample tree-edit-distance accuracy."""
    scores = [ted_accuracy_one(p, r) for p, r in zip(preds, refs, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0


def _normalize_answer(text: str) -> str:
    """ANLS normalization: lower case, whitespace runs collapsed, ends stripped."""
    return " ".join(str(text).lower().split())


def anls_one(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity of one answer (Biten et al. 2019, the DocVQA
    metric): max over the reference answers of 1 - NL(pred, ref), counted as 0 where NL >= 0.5."""
    pred = _normalize_answer(prediction)
    best = 0.0
    for ref in answers:
        nl = Levenshtein.normalized_distance(pred, _normalize_answer(ref))
        best = max(best, 1.0 - nl if nl < threshold else 0.0)
    return best


def anls(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ANLS over questions."""
    scores = [anls_one(p, r) for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores) if scores else 0.0
