"""The registry's command line: models, servings, API keys and usage, on the local database."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from services.common.records import EndpointUsage, ModelKind, ServingRecord, UsageQuery
from services.registry.exporter import Progress
from services.registry.importer import ModelImporter
from services.registry.store import RegistryStore


@contextmanager
def progress_bar(title: str) -> Iterator[Progress]:
    with tqdm(total=100, desc=title, unit="%", bar_format="{l_bar}{bar}| {elapsed}") as bar:

        def update(stage: str, fraction: float) -> None:
            bar.set_postfix_str(stage)
            bar.update(round(fraction * 100) - bar.n)

        yield update


def _unix_ms(text: str) -> int:
    """ISO 8601 date or time (UTC unless it says otherwise) to Unix milliseconds."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _file_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {error.strerror}") from error


def _time(unix_ms: int) -> str:
    if not unix_ms:
        return "-"
    return datetime.fromtimestamp(unix_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.registry")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gRPC service (the default)")

    add = commands.add_parser("import", help="import a .gguf file or checkpoint directory")
    add.add_argument("name")
    add.add_argument("source", type=Path)
    add.add_argument("--kind", choices=[k.name.lower() for k in ModelKind], default="chat")
    add.add_argument("--context-length", type=int, default=0)
    add.add_argument(
        "--chat-template",
        type=_file_text,
        default=None,
        help="Jinja chat template file replacing the source's own (a base model has none)",
    )
    commands.add_parser("list", help="list models and servings")
    remove = commands.add_parser("remove", help="forget a model")
    remove.add_argument("name")

    servings = commands.add_parser("servings", help="manage servings").add_subparsers(
        dest="action", required=True
    )
    create = servings.add_parser("create", help="create a serving for a model")
    create.add_argument("name")
    create.add_argument("model")
    create.add_argument("--system-prompt", default="")
    delete = servings.add_parser("delete", help="delete a serving and its keys")
    delete.add_argument("id", type=int)

    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(
        dest="action", required=True
    )
    issue = keys.add_parser("issue", help="issue a key for a serving (shown once)")
    issue.add_argument("serving_id", type=int)
    issue.add_argument("--name", default="")
    issue.add_argument("--expires", type=_unix_ms, default=0, help="ISO 8601 expiry time")
    listing = keys.add_parser("list", help="list a serving's keys")
    listing.add_argument("serving_id", type=int)
    revoke = keys.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")

    usage = commands.add_parser("usage", help="query the usage log")
    usage.add_argument("--serving", type=int, default=0)
    usage.add_argument("--key", default="")
    usage.add_argument("--user", default="")
    usage.add_argument("--route", default="", help="HTTP route, e.g. /v1/embeddings")
    usage.add_argument("--since", type=_unix_ms, default=0, help="ISO 8601, inclusive")
    usage.add_argument("--until", type=_unix_ms, default=0, help="ISO 8601, exclusive")
    usage.add_argument("--limit", type=int, default=20)
    return parser


def run(args: argparse.Namespace, store: RegistryStore, importer: ModelImporter) -> None:
    """Runs one CLI command (anything but `serve`) and prints its result."""
    if args.command == "import":
        with progress_bar(args.name) as progress:
            record = importer.import_model(
                args.name,
                ModelKind[args.kind.upper()],
                args.source,
                progress,
                context_length=args.context_length,
                chat_template=args.chat_template or "",
            )
        store.add_model(record)
        print(f"imported {record.name} -> {record.artifact_dir}")
    elif args.command == "list":
        for model in store.list_models():
            print(
                f"model   {model.name:32} {model.kind.name.lower():9} "
                f"ctx={model.context_length:<6} graph={model.graph.name.lower():7} "
                f"{model.artifact_dir}"
            )
        for serving in store.list_servings():
            print(f"serving {serving.id:<32} model={serving.model} name={serving.name}")
    elif args.command == "remove":
        store.delete_model(args.name)
        print(f"removed {args.name}")
    elif args.command == "servings" and args.action == "create":
        serving = store.add_serving(
            ServingRecord(id=0, name=args.name, model=args.model, system_prompt=args.system_prompt)
        )
        print(f"created serving {serving.id} for {serving.model}")
    elif args.command == "servings" and args.action == "delete":
        store.delete_serving(args.id)
        print(f"deleted serving {args.id}")
    elif args.command == "keys" and args.action == "issue":
        key, secret = store.create_key(args.serving_id, args.name, args.expires)
        print(f"issued {key.id} for serving {key.serving_id}; the secret is shown only now:")
        print(secret)
    elif args.command == "keys" and args.action == "list":
        for key in store.list_keys(args.serving_id):
            state = "revoked" if key.revoked_at_unix_ms else "active"
            print(
                f"{key.id}  {state:7}  created={_time(key.created_at_unix_ms)}  "
                f"expires={_time(key.expires_at_unix_ms)}  name={key.name}"
            )
    elif args.command == "keys" and args.action == "revoke":
        store.revoke_key(args.key_id)
        print(f"revoked {args.key_id}")
    elif args.command == "usage":
        summary = store.query_usage(
            UsageQuery(
                serving_id=args.serving,
                api_key_id=args.key,
                user_id=args.user,
                endpoint=args.route,
                since_unix_ms=args.since,
                until_unix_ms=args.until,
                limit=args.limit,
            )
        )
        for r in summary.records:
            print(
                f"{_time(r.created_at_unix_ms)}  {r.endpoint}  serving={r.serving_id}"
                f"  key={r.api_key_id or '-'}  user={r.user_id or '-'}"
                f"  tokens={r.prompt_tokens}+{r.completion_tokens}"
                f"  latency={r.latency_ms}ms  {r.status.name.lower()}"
                + ("  blocked" if r.blocked else "")
            )
        _print_route_totals(summary.by_endpoint)
        print(
            f"total: {summary.total_requests} requests, {summary.prompt_tokens} prompt + "
            f"{summary.completion_tokens} completion tokens"
        )


def _print_route_totals(by_endpoint: list[EndpointUsage]) -> None:
    if not by_endpoint:
        return
    width = max(len("route"), *(len(e.endpoint) for e in by_endpoint))
    print()
    print(f"{'route':<{width}}  {'requests':>10}  {'prompt':>12}  {'completion':>12}")
    for e in by_endpoint:
        print(
            f"{e.endpoint:<{width}}  {e.requests:>10}  {e.prompt_tokens:>12}"
            f"  {e.completion_tokens:>12}"
        )
