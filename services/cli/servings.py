"""`llmserve servings list|create|show|update|rm` through the edge's admin API."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from services.cli.config import Defaults
from services.cli.options import SharedOptions, add_command, admin_client, subcommands
from services.cli.output import format_time, print_json, print_table

# What PUT /admin/v1/servings/{id} takes: a serving's JSON without its id and creation time.
EDITABLE_FIELDS = (
    "name",
    "model",
    "system_prompt",
    "default_sampling",
    "rag_collection",
    "moderation",
    "limits",
)


@dataclass(frozen=True)
class Setting:
    """A command-line flag for one field of the serving's JSON (`path` into it)."""

    flag: str
    path: tuple[str, ...]
    type: type
    help: str
    repeated: bool = False
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return "setting_" + "_".join(self.path)


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError("expected on or off")
    return text == "on"


SETTINGS = (
    Setting("--name", ("name",), str, "display name (default: the model's)"),
    Setting("--model", ("model",), str, "model it serves"),
    Setting("--system-prompt", ("system_prompt",), str, "system prompt put before every chat"),
    Setting("--n-predict", ("default_sampling", "n_predict"), int, "default max new tokens"),
    Setting("--temperature", ("default_sampling", "temperature"), float, "default temperature"),
    Setting("--top-p", ("default_sampling", "top_p"), float, "default top_p"),
    Setting("--top-k", ("default_sampling", "top_k"), int, "default top_k"),
    Setting(
        "--presence-penalty", ("default_sampling", "presence_penalty"), float, "default penalty"
    ),
    Setting(
        "--frequency-penalty", ("default_sampling", "frequency_penalty"), float, "default penalty"
    ),
    Setting(
        "--repetition-penalty", ("default_sampling", "repetition_penalty"), float, "default penalty"
    ),
    Setting(
        "--stop", ("default_sampling", "stop"), str, "default stop string (repeat for more)", True
    ),
    Setting("--rag-collection", ("rag_collection",), str, "collection grounding its chats"),
    Setting("--moderation", ("moderation", "enabled"), _on_off, "content moderation: on or off"),
    Setting(
        "--blocked-term", ("moderation", "blocked_terms"), str, "moderated term (repeat)", True
    ),
    Setting(
        "--moderation-action",
        ("moderation", "action"),
        str,
        "what a flag does to a whole answer",
        choices=("cut", "withhold"),
    ),
    Setting("--rpm", ("limits", "requests_per_minute"), int, "requests per minute (0: no limit)"),
    Setting("--tpm", ("limits", "tokens_per_minute"), int, "tokens per minute"),
    Setting("--max-concurrent", ("limits", "max_concurrent_requests"), int, "requests at once"),
    Setting("--key-rpm", ("limits", "key_requests_per_minute"), int, "requests per minute per key"),
    Setting("--key-tpm", ("limits", "key_tokens_per_minute"), int, "tokens per minute per key"),
    Setting(
        "--key-max-concurrent",
        ("limits", "key_max_concurrent_requests"),
        int,
        "requests at once per key",
    ),
)


METAVARS = {int: "N", float: "X", _on_off: "{on,off}"}


def _add_settings(parser: argparse.ArgumentParser, model_required: bool) -> None:
    group = parser.add_argument_group("serving settings (repeated flags replace the whole list)")
    for setting in SETTINGS:
        required = model_required and setting.path == ("model",)
        group.add_argument(
            setting.flag,
            dest=setting.dest,
            type=setting.type,
            action="append" if setting.repeated else "store",
            required=required,
            choices=setting.choices,
            metavar=None if setting.choices else METAVARS.get(setting.type, "TEXT"),
            help=setting.help,
        )


def apply_settings(body: dict, args: argparse.Namespace) -> dict:
    """`body` with the fields the flags set replaced."""
    for setting in SETTINGS:
        value = getattr(args, setting.dest)
        if value is None:
            continue
        *parents, leaf = setting.path
        target = body
        for key in parents:
            target = target.setdefault(key, {})
        target[leaf] = value
    return body


def endpoint(args: argparse.Namespace, serving_id: int) -> str:
    return f"{args.url.rstrip('/')}/api/gateway/rep/serving/{serving_id}/v1"


def list_servings(args: argparse.Namespace, defaults: Defaults) -> None:
    servings = admin_client(args, defaults).call("GET", "/servings")["data"]
    if args.json:
        print_json(servings)
        return
    print_table(
        ["ID", "NAME", "MODEL", "RAG", "MODERATION", "CREATED"],
        [
            [
                s["id"],
                s["name"],
                s["model"],
                s["rag_collection"] or "-",
                "on" if s["moderation"]["enabled"] else "off",
                format_time(s["created_at"]),
            ]
            for s in servings
        ],
    )


def _print_serving(args: argparse.Namespace, serving: dict) -> None:
    if args.json:
        print_json(serving)
        return
    fields = {
        **serving,
        "rag_collection": serving["rag_collection"] or "-",
        "created_at": format_time(serving["created_at"]),
        "endpoint": endpoint(args, serving["id"]),
    }
    for key, value in fields.items():
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value
        print(f"{key + ':':<18}{shown}")


def create_serving(args: argparse.Namespace, defaults: Defaults) -> None:
    body = apply_settings({}, args)
    _print_serving(args, admin_client(args, defaults).call("POST", "/servings", json=body))


def show_serving(args: argparse.Namespace, defaults: Defaults) -> None:
    _print_serving(args, admin_client(args, defaults).call("GET", f"/servings/{args.id}"))


def update_serving(args: argparse.Namespace, defaults: Defaults) -> None:
    """The admin API replaces a serving whole: read it, change what the flags say, put it."""
    admin = admin_client(args, defaults)
    current = admin.call("GET", f"/servings/{args.id}")
    body = apply_settings({k: current[k] for k in EDITABLE_FIELDS}, args)
    _print_serving(args, admin.call("PUT", f"/servings/{args.id}", json=body))


def remove_serving(args: argparse.Namespace, defaults: Defaults) -> None:
    admin_client(args, defaults).call("DELETE", f"/servings/{args.id}")
    print(f"deleted serving {args.id} and its keys")


def register(commands: argparse._SubParsersAction, shared: SharedOptions) -> None:
    servings = subcommands(add_command(commands, "servings", "manage servings (deployed models)"))
    with_output = [shared.admin, shared.output]
    add_command(servings, "list", "list servings", list_servings, with_output)
    create = add_command(servings, "create", "create a serving", create_serving, with_output)
    _add_settings(create, model_required=True)
    show = add_command(servings, "show", "show a serving", show_serving, with_output)
    show.add_argument("id", type=int, help="serving id")
    update = add_command(
        servings, "update", "change some of a serving's settings", update_serving, with_output
    )
    update.add_argument("id", type=int, help="serving id")
    _add_settings(update, model_required=False)
    remove = add_command(
        servings, "rm", "delete a serving and its keys", remove_serving, [shared.admin]
    )
    remove.add_argument("id", type=int, help="serving id")
