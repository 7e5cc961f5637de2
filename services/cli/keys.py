"""`llmserve keys issue|list|revoke`: a serving's API keys, through the edge's admin API."""

from __future__ import annotations

import argparse

from services.cli.config import Defaults
from services.cli.options import SharedOptions, add_command, admin_client, subcommands
from services.cli.output import format_time, print_json, print_table, unix_seconds


def issue_key(args: argparse.Namespace, defaults: Defaults) -> None:
    body = {"name": args.name, "expires_at": args.expires}
    key = admin_client(args, defaults).call("POST", f"/servings/{args.serving_id}/keys", json=body)
    if args.json:
        print_json(key)
        return
    print(f"issued {key['id']} for serving {key['serving_id']}; the secret is shown only now:")
    print(key["secret"])


def list_keys(args: argparse.Namespace, defaults: Defaults) -> None:
    keys = admin_client(args, defaults).call("GET", f"/servings/{args.serving_id}/keys")["data"]
    if args.json:
        print_json(keys)
        return
    print_table(
        ["ID", "STATE", "CREATED", "EXPIRES", "NAME"],
        [
            [
                k["id"],
                "revoked" if k["revoked_at"] else "active",
                format_time(k["created_at"]),
                format_time(k["expires_at"]),
                k["name"],
            ]
            for k in keys
        ],
    )


def revoke_key(args: argparse.Namespace, defaults: Defaults) -> None:
    admin_client(args, defaults).call("DELETE", f"/keys/{args.key_id}")
    print(f"revoked {args.key_id}")


def register(commands: argparse._SubParsersAction, shared: SharedOptions) -> None:
    keys = subcommands(add_command(commands, "keys", "manage a serving's API keys"))
    with_output = [shared.admin, shared.output]
    issue = add_command(
        keys, "issue", "issue a key (its secret is shown once)", issue_key, with_output
    )
    issue.add_argument("serving_id", type=int, help="the serving the key acts for")
    issue.add_argument("--name", default="", help="what the key is for")
    issue.add_argument(
        "--expires",
        type=unix_seconds,
        default=0,
        help="expiry, ISO 8601 or Unix seconds (default: never)",
    )
    listing = add_command(keys, "list", "list a serving's keys", list_keys, with_output)
    listing.add_argument("serving_id", type=int, help="serving id")
    revoke = add_command(keys, "revoke", "revoke a key at once", revoke_key, [shared.admin])
    revoke.add_argument("key_id", help="key id (key_...), as `keys list` shows it")
