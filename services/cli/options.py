"""Options shared by commands (as argparse parent parsers, so they go after the command:
`llmserve keys list 2 --url ...`), and the one way a command is declared."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from services.cli.config import Defaults
from services.cli.edge_client import EdgeClient
from services.cli.errors import EXIT_CODES_HELP

Handler = Callable[[argparse.Namespace, Defaults], None]


class SharedOptions:
    """Parent parsers, with the defaults this environment gives shown in their help."""

    def __init__(self, defaults: Defaults):
        self.admin = _parent()
        self.admin.add_argument(
            "--url", default=defaults.url, help="the edge's base URL (default: %(default)s)"
        )
        self.admin.add_argument(
            "--admin-token",
            help=f"admin token (default: $EDGE_ADMIN_TOKEN, else {defaults.admin_token_path})",
        )
        self.admin.add_argument(
            "--timeout", type=float, default=30.0, help="seconds per request (default: 30)"
        )

        self.api = _parent()
        self.api.add_argument(
            "--url", default=defaults.url, help="the edge's base URL (default: %(default)s)"
        )
        self.api.add_argument(
            "--api-key",
            help=f"API key (default: $OPENAI_API_KEY, else {defaults.dev_key_path})",
        )

        self.registry = _parent()
        self.registry.add_argument(
            "--registry",
            default=defaults.registry,
            help="the registry's gRPC address (default: %(default)s)",
        )

        self.output = _parent()
        self.output.add_argument("--json", action="store_true", help="print JSON for scripts")


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def add_command(
    commands: argparse._SubParsersAction,
    name: str,
    summary: str,
    handler: Handler | None = None,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """A (sub)command whose --help ends with the exit codes; `handler` runs it."""
    parser = commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=list(parents),
    )
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return parser.add_subparsers(dest="action", required=True, metavar="ACTION")


def admin_client(args: argparse.Namespace, defaults: Defaults) -> EdgeClient:
    """The edge's admin API (/admin/v1) with the admin token."""
    token = defaults.admin_token_of(args.admin_token)
    return EdgeClient(f"{args.url.rstrip('/')}/admin/v1", token, args.timeout)
