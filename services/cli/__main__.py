"""`llmserve` (or `python -m services.cli`): parses the command line, runs one command, and
turns its failure into one line on stderr and an exit code (services/cli/errors.py)."""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError

from services.cli import chat, keys, models, servings, usage
from services.cli.config import Defaults
from services.cli.errors import EXIT_CODES_HELP, INTERRUPTED, USAGE, CliError
from services.cli.options import SharedOptions, add_command


def run_stack(args: argparse.Namespace, defaults: Defaults) -> None:
    # Imported here: the launcher loads the registry's store (SQLAlchemy, Alembic), a second
    # that no other command should wait for.
    from services.launcher.__main__ import main as launch

    # It reads its configuration from the environment, as under `make run`.
    launch()


def build_parser(defaults: Defaults) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmserve",
        description="Run and manage the llmserve platform: models, servings, API keys, usage, "
        "and chat. `llmserve COMMAND --help` tells more.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_command(
        commands,
        "run",
        "start the whole stack on this machine (what `make run` does; Ctrl-C stops it)",
        run_stack,
    )
    shared = SharedOptions(defaults)
    for module in (models, servings, keys, usage, chat):
        module.register(commands, shared)
    return parser


def fail(message: str, exit_code: int) -> None:
    print(f"llmserve: error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def main(argv: list[str] | None = None) -> None:
    try:
        defaults = Defaults.from_environment()
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        fail(f"bad setting in the environment ({where}): {first['msg']}", USAGE)
    args = build_parser(defaults).parse_args(argv)
    try:
        args.handler(args, defaults)
    except CliError as error:
        fail(error.message, error.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", INTERRUPTED)
    except BrokenPipeError:
        # The reader left (`llmserve usage | head`): nothing more to say, and Python's own
        # flush at exit must not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
