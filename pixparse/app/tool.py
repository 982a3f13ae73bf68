"""Shared entry for the one-function tools (synth, tokenizer, export)."""
import atexit
import gc
from collections.abc import Callable
from typing import Any

from jsonargparse import auto_cli, set_parsing_settings


_EXIT_FROZEN = False


def freeze_heap_at_exit() -> None:
    """At exit Python collects its whole heap several times while tearing modules down; with
    torch, transformers and DeepSpeed loaded that took 1.5-2.5 s of every process's exit here
    (0.3 s frozen), paid by every rank, eval and tool process of every run. At exit (after every
    other exit handler: close, flush, finish) the heap is frozen, so those passes skip it.
    Registered once; nothing changes while the process runs."""
    global _EXIT_FROZEN
    if not _EXIT_FROZEN:
        atexit.register(gc.freeze)  # exit handlers run last-registered first: this one runs late
        _EXIT_FROZEN = True


def run_tool(fn: Callable[..., Any], argv: list[str] | None = None, positional: bool = False) -> Any:
    """Parse flags named after `fn`'s typed arguments (its docstring is the --help) and call it;
    with `positional`, arguments without defaults are positional. A ValueError it raises
    becomes one error line and exit status 1."""
    freeze_heap_at_exit()
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    try:
        return auto_cli(fn, args=argv, as_positional=positional)
    except ValueError as e:
        raise SystemExit(f"pixparse {fn.__name__}: error: {e}") from None
