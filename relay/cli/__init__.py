"""The `relay` command.

relay serve [--host H] [--port P]   the web process (Procfile: web); with SLACK_APP_TOKEN it
                                    also holds Slack's Socket Mode connection
relay worker                        the delivery process (Procfile: worker)
relay watch                         carry agents' approval requests and replies back to chat
                                    (Procfile: watch; routes opt in with [routes.NAME.watch])
relay dev [--host H] [--port P]     everything in one process, no Redis or Letta needed
relay send TEXT | --approve ID | --deny ID [--reason R]   sign and post a generic webhook
relay dlq list | replay ID…|--all | drop ID…             inspect and replay dead letters
                                    (REDIS_URL, or a running relay's /admin API)
relay status [--watch] [--interval S]   queue depths, oldest message, dead letters, failures
relay check                         settings, routes, Redis and (with LETTA_API_KEY) destinations
relay secret                        print a new whsec_ secret for RELAY_HOOK_SECRET

The commands live by kind: `processes` (serve, worker, watch, dev), `operations` (send, dlq,
status, check); `common` holds what they share.
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys
from typing import Sequence

from relay import __version__
from relay.cli.common import DEFAULT_HOST, DEFAULT_PORT
from relay.cli.operations import (cmd_check, cmd_dlq_drop, cmd_dlq_list, cmd_dlq_replay, cmd_send, cmd_status,
                                  seconds_above_zero)
from relay.cli.processes import cmd_dev, cmd_serve, cmd_watch, cmd_worker
from relay.errors import ConfigError


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ConfigError as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay", description="Deliver webhooks to Letta agents.")
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, run, text in (("serve", cmd_serve, "run the web process (needs REDIS_URL)"),
                            ("dev", cmd_dev, "run everything in one process (no Redis or Letta needed)")):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--host", default=DEFAULT_HOST, help=f"interface to listen on (default {DEFAULT_HOST})")
        command.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
        command.set_defaults(run=run)

    worker = commands.add_parser("worker", help="run the delivery process (needs REDIS_URL, LETTA_API_KEY)")
    worker.set_defaults(run=cmd_worker)

    watch = commands.add_parser("watch", help="carry agents' approval requests and replies back to chat "
                                              "(needs REDIS_URL, LETTA_API_KEY, routes with [routes.NAME.watch])")
    watch.set_defaults(run=cmd_watch)

    send = commands.add_parser("send", help="sign and post a generic webhook to a running relay")
    what = send.add_mutually_exclusive_group(required=True)
    what.add_argument("text", nargs="?", help="the message for the agent")
    what.add_argument("--approve", metavar="TOOL_CALL_ID", help="approve a pending tool call")
    what.add_argument("--deny", metavar="TOOL_CALL_ID", help="deny a pending tool call")
    send.add_argument("--reason", help="why (sent with --deny or --approve)")
    send.add_argument("--route", help="a route name from RELAY_ROUTES (default: the default destination)")
    send.add_argument("--url", default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/hooks/generic",
                      help="where relay listens (default %(default)s)")
    send.add_argument("--id", dest="webhook_id", help="webhook-id to use (repeat one to see de-duplication)")
    send.set_defaults(run=cmd_send)

    dlq = commands.add_parser("dlq", help="dead letters: list, replay, drop")
    dlq.add_argument("--url", default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}",
                     help="a running relay to ask when REDIS_URL is not set (default %(default)s)")
    actions = dlq.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="show dead letters, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(run=cmd_dlq_list)
    replay = actions.add_parser("replay", help="queue dead letters again, keeping their client_message_id")
    replay.add_argument("ids", nargs="*", metavar="ID", help="client_message_id of each dead letter")
    replay.add_argument("--all", action="store_true", help="replay every dead letter")
    replay.add_argument("--force", action="store_true",
                        help="replay even a message an earlier attempt may have delivered over an hour ago "
                             "(the device has forgotten its id by then: the agent may see it twice)")
    replay.set_defaults(run=cmd_dlq_replay)
    drop = actions.add_parser("drop", help="delete dead letters for good")
    drop.add_argument("ids", nargs="+", metavar="ID", help="client_message_id of each dead letter")
    drop.set_defaults(run=cmd_dlq_drop)

    status = commands.add_parser("status", help="queue depths, oldest waiting message, dead letters, failures")
    status.add_argument("--watch", action="store_true", help="refresh until interrupted")
    status.add_argument("--interval", type=seconds_above_zero, default=2.0, metavar="S",
                        help="seconds between refreshes with --watch (default %(default)s)")
    status.add_argument("--url", default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}",
                        help="a running relay to ask when REDIS_URL is not set (default %(default)s)")
    status.set_defaults(run=cmd_status)

    check = commands.add_parser("check", help="check settings, routes, Redis and Letta destinations")
    check.set_defaults(run=cmd_check)

    secret = commands.add_parser("secret", help="print a new whsec_ secret for RELAY_HOOK_SECRET")
    secret.set_defaults(run=lambda args: print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()))
    return parser
