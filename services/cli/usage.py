"""`llmserve usage`: the usage log with its totals, filtered as the admin API filters it."""

from __future__ import annotations

import argparse

from services.cli.config import Defaults
from services.cli.options import SharedOptions, add_command, admin_client
from services.cli.output import format_time, positive_int, print_json, print_table, unix_seconds


def show_usage(args: argparse.Namespace, defaults: Defaults) -> None:
    filters = {
        "serving_id": args.serving,
        "api_key_id": args.key,
        "user_id": args.user,
        "route": args.route,
        "since": args.since,
        "until": args.until,
        "limit": args.limit,
    }
    # Unset filters stay out of the query, as the API's defaults mean "any".
    params = {k: v for k, v in filters.items() if v}
    summary = admin_client(args, defaults).call("GET", "/usage", params=params)
    if args.json:
        print_json(summary)
        return
    print_table(
        ["TIME", "ROUTE", "SERVING", "MODEL", "KEY", "USER", "TOKENS", "MS", "STATUS"],
        [
            [
                format_time(r["created_at_unix_ms"] / 1000),
                r["endpoint"],
                r["serving_id"],
                r["model"] or "-",
                r["api_key_id"] or "-",
                r["user_id"] or "-",
                f"{r['prompt_tokens']}+{r['completion_tokens']}",
                r["latency_ms"],
                r["status"] + (" blocked" if r["blocked"] else ""),
            ]
            for r in summary["data"]
        ],
    )
    if summary["by_route"]:
        print()
        print_table(
            ["ROUTE", "REQUESTS", "PROMPT", "COMPLETION"],
            [
                [e["route"], e["requests"], e["prompt_tokens"], e["completion_tokens"]]
                for e in summary["by_route"]
            ],
        )
    print(
        f"\ntotal: {summary['total_requests']} requests, {summary['total_prompt_tokens']} "
        f"prompt + {summary['total_completion_tokens']} completion tokens"
    )


def register(commands: argparse._SubParsersAction, shared: SharedOptions) -> None:
    usage = add_command(
        commands,
        "usage",
        "show the usage log (newest first) with totals over every match",
        show_usage,
        [shared.admin, shared.output],
    )
    usage.add_argument("--serving", type=int, default=0, help="serving id")
    usage.add_argument("--key", default="", help="API key id")
    usage.add_argument("--user", default="", help="user id (x-genos-user-id or `user`)")
    usage.add_argument("--route", default="", help="HTTP route, e.g. /v1/embeddings")
    usage.add_argument(
        "--since", type=unix_seconds, default=0, help="ISO 8601 or Unix seconds, inclusive"
    )
    usage.add_argument(
        "--until", type=unix_seconds, default=0, help="ISO 8601 or Unix seconds, exclusive"
    )
    usage.add_argument("--limit", type=positive_int, default=20, help="records shown (default: 20)")
