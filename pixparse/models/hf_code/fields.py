"""Key-field targets as Donut writes them: a JSON tree as a flat token sequence and back.

    {"total": "9.00", "menu": [{"nm": "tea"}, {"nm": "cake"}]}
    -> <s_menu><s_nm>tea</s_nm><sep/><s_nm>cake</s_nm></s_menu><s_total>9.00</s_total>

Each key becomes an open/close token pair, list items are joined by <sep/>; keys are written in
sorted order, so one tree has one sequence. The field tokens come from the data (every key of
every sample's `fields`), never from a hand-written list. The parser is the inverse for
well-formed text and returns what it can for malformed model output: an unclosed field takes
the text up to the next field it cannot belong to, and stray close tokens are dropped.
"""
import re
from collections.abc import Iterable
from typing import Any

SEP = "<sep/>"
_TOKEN = re.compile(r"(<s_[^<>]+?>|</s_[^<>]+?>|<sep/>)")


def field_keys(tree: Any) -> set[str]:
    """Every dict key anywhere in `tree`."""
    keys: set[str] = set()
    if isinstance(tree, dict):
        for k, v in tree.items():
            keys.add(str(k))
            keys |= field_keys(v)
    elif isinstance(tree, list):
        for item in tree:
            keys |= field_keys(item)
    return keys


def field_tokens(keys: Iterable[str]) -> list[str]:
    """Open and close tokens of `keys` plus the list separator, in a stable order."""
    out = [SEP]
    for k in sorted(set(keys)):
        out += [f"<s_{k}>", f"</s_{k}>"]
    return out


def tree_to_text(tree: Any) -> str:
    """Serialize a fields tree (dicts, lists, scalars) with field tokens."""
    if isinstance(tree, dict):
        return "".join(f"<s_{k}>{tree_to_text(tree[k])}</s_{k}>" for k in sorted(tree, key=str))
    if isinstance(tree, list):
        return SEP.join(tree_to_text(item) for item in tree)
    return "" if tree is None else str(tree)


def text_to_tree(text: str) -> dict[str, Any]:
    """Parse field-token text back into a tree; never raises. Text outside any field is dropped."""
    parts = [p for p in _TOKEN.split(text) if p]
    tree, _ = _parse(parts, 0, None)
    return tree if isinstance(tree, dict) else {}


def _parse(parts: list[str], i: int, closing: str | None) -> tuple[Any, int]:
    """Parse parts[i:] up to `closing` (or the end). Returns (value, index after it), where the
    value is a dict (fields), a list (items joined by <sep/>) or a string (a leaf)."""
    items: list[Any] = []
    fields: dict[str, Any] = {}
    leaf: list[str] = []

    def close_item() -> None:
        nonlocal fields, leaf
        if fields:
            items.append(fields)
        elif "".join(leaf).strip():
            items.append("".join(leaf).strip())
        fields, leaf = {}, []

    while i < len(parts):
        part = parts[i]
        if part == closing:
            i += 1
            break
        if part.startswith("</s_"):  # a close token we are not inside: end here if an outer
            if closing is not None:  # field closes (our own close is missing), else drop it
                break
            i += 1
            continue
        if part == SEP:
            close_item()
            i += 1
            continue
        if part.startswith("<s_"):
            key = part[3:-1]
            value, i = _parse(parts, i + 1, f"</s_{key}>")
            if value not in ("", [], {}):
                if key in fields:  # the same key twice in one dict: keep both as a list
                    prev = fields[key]
                    fields[key] = (prev if isinstance(prev, list) else [prev]) + \
                        (value if isinstance(value, list) else [value])
                else:
                    fields[key] = value
            continue
        leaf.append(part)
        i += 1
    close_item()
    if not items:
        return "", i
    if len(items) == 1:
        return items[0], i
    return items, i
