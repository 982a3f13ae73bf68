"""`python -m pixparse.app.train ...` == `pixparse pretrain ...` (huggingface/pixparse's entry)."""
import sys

from pixparse.cli import main as cli_main


def main(argv: list[str] | None = None) -> None:
    cli_main(["pretrain", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
