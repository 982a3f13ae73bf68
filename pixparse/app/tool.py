"""Shared entry for the one-function tools (synth, tokenizer, export)."""
from collections.abc import Callable
from typing import Any

from jsonargparse import auto_cli, set_parsing_settings


def run_tool(fn: Callable[..., Any], argv: list[str] | None = None, positional: bool = False) -> Any:
    """Parse flags named after `fn`'s typed arguments (its docstring is the --help) and call it;
    with `positional`, arguments without defaults are positional. A ValueError it raises
    becomes one error line and exit status 1."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    try:
        return auto_cli(fn, args=argv, as_positional=positional)
    except ValueError as e:
        raise SystemExit(f"pixparse {fn.__name__}: error: {e}") from None
