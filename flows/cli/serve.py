"""``voxflow serve``: every flow of the registry as a deployment served from this process."""

from __future__ import annotations

import argparse


def add_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--inbox", help="folder or s3:// prefix the scheduled ingest-folder watches (default $VOXFLOW_INBOX or ./inbox)"
    )
    schedule = parser.add_mutually_exclusive_group()
    schedule.add_argument("--cron", help="ingest-folder cron schedule (default every 10 minutes)")
    schedule.add_argument("--interval", type=float, metavar="SECONDS", help="run ingest-folder every N seconds instead")
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    from voxflow.flows.deployments import serve_all

    serve_all(args.inbox, args.cron, args.interval)
    return 0


COMMANDS = {"serve": add_serve}
