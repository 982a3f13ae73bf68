"""`pixparse <subcommand>`: parse the typed config tree, then hand it to the engine."""
import dataclasses
import itertools
import logging
import sys
import typing
from collections.abc import Iterator
from typing import Any

from jsonargparse import ArgumentParser, DefaultHelpFormatter, auto_cli, set_parsing_settings

from pixparse.config import BenchConfig, EvalConfig, PretrainConfig

logger = logging.getLogger(__name__)

COMMANDS: dict[str, type] = {"pretrain": PretrainConfig, "bench": BenchConfig, "eval": EvalConfig}

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after a checkpoint; requeue me


class _HelpFormatter(DefaultHelpFormatter):
    """A subcommand's --help opens with one usage line; the flags follow once, grouped by section."""

    def add_usage(self, usage, actions, groups, prefix=None):
        # prefix "": argparse composing a subcommand's prog; a prog without a space: the root parser
        if usage is None and prefix != "" and " " in self._prog:
            usage = "%(prog)s [--config FILE] [--SECTION.FLAG VALUE ...]"
        super().add_usage(usage, actions, groups, prefix)


class _Parser(ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _config_fields(cls: type, prefix: str = "--") -> Iterator[tuple[str, Any]]:
    """(flag, type) of every field of a config dataclass tree, groups (optional ones included) and
    their fields: ('--data.eval', DataEvalConfig | None), ('--data.eval.source', str), ..."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag, tp = f"{prefix}{f.name}", hints[f.name]
        yield flag, tp
        for sub in (tp, *typing.get_args(tp)):
            if dataclasses.is_dataclass(sub):
                yield from _config_fields(sub, f"{flag}.")


def _tuple_flags(cls: type) -> dict[str, int]:
    """Flags of fixed-length tuple fields ('--task.opt.betas': 2) in a config dataclass tree."""
    return {flag: len(typing.get_args(tp)) for flag, tp in _config_fields(cls)
            if typing.get_origin(tp) is tuple and Ellipsis not in typing.get_args(tp)}


def _list_flags(cls: type) -> set[str]:
    """Flags of list fields ('--data.train.source_weights') in a config dataclass tree."""
    return {flag for flag, tp in _config_fields(cls)
            if typing.get_origin(tp) is list or any(typing.get_origin(a) is list for a in typing.get_args(tp))}


# huggingface/pixparse's spellings (after dashes become underscores) -> ours, per subcommand
ALIASES: dict[str, dict[str, str]] = {
    "pretrain": {"--task_name": "--task.name", "--model_name": "--task.model_name",
                 "--train.checkpoint_path": "--train.resume"},
    "eval": {"--task_name": "--task.name", "--eval.task_name": "--task.name"},
}
ALIASES["bench"] = ALIASES["pretrain"]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def normalize_argv(argv: list[str], root: type, command: str = "") -> list[str]:
    """Accept huggingface/pixparse spellings: dashes in flag names (--data.train.batch-size), its
    flag names (--task-name, --model-name, --train.checkpoint-path, --resume True),
    space-separated tuples (--task.opt.betas 0.9 0.98) and lists of numbers
    (--data.train.source_weights 0.8 0.2)."""
    tuple_flags, list_flags = _tuple_flags(root), _list_flags(root)
    aliases = ALIASES.get(command, {})
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            name = "--" + name[2:].replace("-", "_")
            name = aliases.get(name, name)
            if name == "--resume" and command in ("pretrain", "bench"):  # the seed's boolean
                flag = value if eq else (argv[i + 1] if i + 1 < len(argv) else "true")
                i += 1 if eq else 2
                if flag.lower() in ("true", "1", "yes"):
                    out += ["--train.resume", "latest"]
                continue
            arg = name + eq + value
            n = tuple_flags.get(arg)
            rest = argv[i + 1 : i + 1 + (n or 0)]
            if n and len(rest) == n and not any(r.startswith("--") for r in rest):
                out += [arg, "[" + ", ".join(rest) + "]"]
                i += 1 + n
                continue
            if arg in list_flags:
                numbers = list(itertools.takewhile(_is_number, argv[i + 1:]))
                if numbers:
                    out += [arg, "[" + ", ".join(numbers) + "]"]
                    i += 1 + len(numbers)
                    continue
        out.append(arg)
        i += 1
    return out


MAX_CONFIG_NODES = 100_000  # a YAML config's values once its aliases are expanded


def _expanded_nodes(node: Any, memo: dict[int, int]) -> int:
    """Values in a composed YAML node once aliases are expanded (each shared node counted once
    per use; memoized, so an alias bomb is measured without being expanded)."""
    import yaml

    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a recursive alias counts as one here; the loader refuses it later
    if isinstance(node, yaml.SequenceNode):
        total = 1 + sum(_expanded_nodes(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        total = 1 + sum(_expanded_nodes(k, memo) + _expanded_nodes(v, memo) for k, v in node.value)
    else:
        total = 1
    memo[id(node)] = total
    return total


def check_config_files(argv: list[str]) -> None:
    """Every --config file is UTF-8 YAML of at most MAX_CONFIG_NODES values once its aliases are
    expanded (a 'billion laughs' file would otherwise take the machine's memory while parsing)."""
    import yaml

    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    for path in paths:
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except OSError:
            continue  # jsonargparse says the file does not exist
        except UnicodeDecodeError as e:
            raise ValueError(f"--config {path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
        try:
            nodes = sum(_expanded_nodes(doc, {}) for doc in yaml.compose_all(text, Loader=yaml.SafeLoader))
        except yaml.YAMLError as e:
            raise ValueError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if nodes > MAX_CONFIG_NODES:
            raise ValueError(f"--config {path}: {nodes} values once its aliases are expanded, over "
                             f"{MAX_CONFIG_NODES}; refusing an alias bomb (a config is a few hundred values)")


def check_flags(argv: list[str], command: str) -> None:
    """An unknown flag is one line with the nearest known ones, not jsonargparse's whole usage."""
    import difflib

    known = {flag for flag, _ in _config_fields(COMMANDS[command])} | {"--config", "--print_config", "--help"}
    for arg in argv:
        name = arg.partition("=")[0]
        if name.startswith("--") and name not in known:
            if command == "eval" and name in {flag for flag, _ in _config_fields(PretrainConfig)}:
                hint = ": a training flag (eval takes the model, tokenizer and size from --eval.checkpoint_path)"
            else:
                close = difflib.get_close_matches(name, sorted(known), n=2, cutoff=0.85)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ValueError(f"unknown flag {name}{hint} (pixparse {command} --help lists them)")


def checkpoint_task(argv: list[str]) -> list[str]:
    """eval without --task.name (and no --config): ['--task.name', <the task the local checkpoint
    was trained for>], read from its model_config.json; [] where that cannot be read here."""
    flags = {a.partition("=")[0] for a in argv}
    if "--task.name" in flags or "--config" in flags or "--s3_bucket" in flags:
        return []
    path = next((a.partition("=")[2] or (argv[i + 1] if i + 1 < len(argv) else "") for i, a in enumerate(argv)
                 if a.partition("=")[0] == "--eval.checkpoint_path"), "")
    if not path or "://" in path:
        return []
    from pixparse.models.export import read_info, resolve_checkpoint_path

    try:
        return ["--task.name", read_info(resolve_checkpoint_path(path))["task"]]
    except (ValueError, KeyError, TypeError):
        return []  # the eval app names the problem


def parse(argv: list[str]) -> tuple[str, Any]:
    """argv ('pretrain', flags...) -> (command, root config instance)."""
    check_config_files(argv)
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    if argv and argv[0] in COMMANDS:
        argv = [argv[0]] + normalize_argv(argv[1:], COMMANDS[argv[0]], argv[0])
        check_flags(argv[1:], argv[0])
        if argv[0] == "eval":
            argv = argv + checkpoint_task(argv[1:])
    result = auto_cli(COMMANDS, args=argv, as_positional=False, parser_class=_Parser, prog="pixparse")
    # auto_cli returns the instance of the chosen subcommand's class
    command = argv[0] if argv else ""
    return command, result


# One-function tools, each its own module's main: `pixparse export ...` == `python -m pixparse.app.export ...`
TOOLS = {"export": "pixparse.app.export", "write": "pixparse.app.write", "synth": "pixparse.app.synth",
         "tokenizer": "pixparse.app.tokenizer"}


def main(argv: list[str] | None = None) -> None:
    from pixparse.app.tool import freeze_heap_at_exit

    freeze_heap_at_exit()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:
        import importlib

        importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
        return
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: pixparse {{{','.join([*COMMANDS, *TOOLS])}}} ...\n"
              f"  {', '.join(COMMANDS)}: run (pixparse <command> --help)\n"
              f"  {', '.join(TOOLS)}: tools (pixparse <tool> --help)")
        if not argv:
            raise SystemExit(2)
        return
    try:
        command, cfg = parse(argv)
    except ValueError as e:  # a config value the dataclasses rejected: one clear line, no traceback
        raise SystemExit(f"pixparse: error: {e}") from None
    try:
        if command == "pretrain":
            from pixparse.app.run import run_pretrain

            if not run_pretrain(cfg):
                raise SystemExit(EXIT_PREEMPTED)
        elif command == "bench":
            from pixparse.app.run import run_bench

            run_bench(cfg)
        elif command == "eval":
            from pixparse.app.eval import run_eval

            run_eval(cfg)
    except ValueError as e:  # our user errors (a flag, a file, a checkpoint): one line, no traceback
        raise SystemExit(f"pixparse {command}: error: {e}") from None


if __name__ == "__main__":
    main()
