"""`llmserve chat`: a streamed chat with a serving through the public OpenAI API, as any client
would talk to it; interactive (the conversation is kept), or one `--message` for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator

from services.cli.config import Defaults
from services.cli.edge_client import EdgeClient
from services.cli.errors import REFUSED, CliError
from services.cli.options import SharedOptions, add_command
from services.cli.output import positive_int

EXIT_WORDS = ("/exit", "/quit")


def sse_data(lines: Iterable[str]) -> Iterator[dict]:
    """The JSON payloads of an SSE stream up to `[DONE]`; an error event raises CliError."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            return
        event = json.loads(payload)
        if "error" in event:
            raise CliError(event["error"].get("message", "the stream failed"), REFUSED)
        yield event


class ChatSession:
    """A conversation: each question and answer joins the messages the next request sends."""

    def __init__(self, client: EdgeClient, model: str, args: argparse.Namespace):
        self._client = client
        self.model = model
        self._messages = [{"role": "system", "content": args.system}] if args.system else []
        sampling = {"temperature": args.temperature, "max_tokens": args.max_tokens}
        self._sampling = {k: v for k, v in sampling.items() if v is not None}
        self._show_usage = args.show_usage

    def ask(self, question: str) -> None:
        """Streams the answer to stdout as it arrives. An interrupted answer stays in the
        conversation as far as it was shown; a refused or unanswered question leaves it."""
        self._messages.append({"role": "user", "content": question})
        body = {"model": self.model, "messages": self._messages, "stream": True, **self._sampling}
        shown: list[str] = []
        refused = False
        try:
            with self._client.stream("POST", "/chat/completions", json=body) as response:
                for chunk in sse_data(response.iter_lines()):
                    self._show(chunk, shown)
        except CliError:
            refused = True
            raise
        finally:
            sys.stdout.write("\n")
            sys.stdout.flush()
            if refused or not shown:
                self._messages.pop()
            else:
                self._messages.append({"role": "assistant", "content": "".join(shown)})

    def _show(self, chunk: dict, shown: list[str]) -> None:
        for choice in chunk.get("choices", []):
            text = choice.get("delta", {}).get("content")
            if text:
                shown.append(text)
                sys.stdout.write(text)
                sys.stdout.flush()
        if chunk.get("blocked"):
            print("\n[moderation stopped this answer]", file=sys.stderr)
        usage = chunk.get("usage")
        if self._show_usage and usage and chunk.get("choices"):
            print(
                f"\n[{usage['prompt_tokens']} prompt + {usage['completion_tokens']} "
                "completion tokens]",
                file=sys.stderr,
                end="",
            )


def chat_model(client: EdgeClient) -> str:
    """The first chat model the key may use (a serving's key sees its serving's model)."""
    models = client.call("GET", "/models")["data"]
    for model in models:
        if model.get("kind", "chat") == "chat":
            return model["id"]
    raise CliError("no chat model is available to this key", REFUSED)


def interactive(session: ChatSession) -> None:
    """Questions from the terminal until /exit, Ctrl-D or Ctrl-C at the prompt; Ctrl-C while
    an answer streams stops that answer (closing the stream cancels its generation)."""
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    print(
        f"chatting with {session.model}: /exit or Ctrl-D leaves, Ctrl-C stops an answer",
        file=sys.stderr,
    )
    while True:
        try:
            question = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if question in EXIT_WORDS:
            return
        if not question:
            continue
        try:
            session.ask(question)
        except KeyboardInterrupt:
            print("[answer stopped]", file=sys.stderr)
        except CliError as error:
            if error.exit_code != REFUSED:
                raise
            print(f"llmserve: error: {error.message}", file=sys.stderr)


def run_chat(args: argparse.Namespace, defaults: Defaults) -> None:
    base = args.url.rstrip("/")
    base += f"/api/gateway/rep/serving/{args.serving}/v1" if args.serving else "/v1"
    # Long enough for a long answer's pauses; connecting fails fast.
    client = EdgeClient(base, defaults.api_key_of(args.api_key), timeout_s=600.0)
    try:
        session = ChatSession(client, args.model or chat_model(client), args)
        if args.message is None:
            interactive(session)
        else:
            message = sys.stdin.read() if args.message == "-" else args.message
            session.ask(message)
    finally:
        client.close()


def register(commands: argparse._SubParsersAction, shared: SharedOptions) -> None:
    chat = add_command(
        commands,
        "chat",
        "chat with a serving, answers streamed (/exit or Ctrl-D leaves, Ctrl-C stops an answer)",
        run_chat,
        [shared.api],
    )
    chat.add_argument(
        "--serving",
        type=positive_int,
        metavar="ID",
        help="serving id (default: the one the key belongs to)",
    )
    chat.add_argument("--model", help="model to ask (default: the first chat model the key sees)")
    chat.add_argument(
        "-m", "--message", metavar="TEXT", help="ask once, print the answer and exit ('-': stdin)"
    )
    chat.add_argument("--system", metavar="TEXT", help="system prompt")
    chat.add_argument(
        "--temperature", type=float, metavar="X", help="sampling temperature (0: greedy)"
    )
    chat.add_argument(
        "--max-tokens", type=positive_int, metavar="N", help="longest answer in tokens"
    )
    chat.add_argument(
        "--show-usage", action="store_true", help="print token usage after each answer (stderr)"
    )
