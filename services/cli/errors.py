"""How the command line fails: one line on stderr and an exit code a script can test."""

from __future__ import annotations

OK = 0
# The server answered and said no: refused, invalid or not found.
REFUSED = 1
# Bad arguments or missing credentials (argparse exits with 2 too).
USAGE = 2
# No server answered at the address.
UNREACHABLE = 3
# Ctrl-C, as shells report a process ended by SIGINT.
INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0  success
  1  the server refused the request or found nothing (its message is printed)
  2  usage error: bad arguments or missing credentials
  3  cannot connect to the server
"""


class CliError(Exception):
    """A failure to report as `llmserve: error: <message>` and exit with `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
