"""``voxflow catalog TABLE | compact | migrate``: read a catalog table (now or as it was), maintain the
tables, or convert a store written by the part-file catalog."""

from __future__ import annotations

import argparse
from datetime import datetime

from voxflow.flows.cli.common import add_store_options, print_rows

ACTIONS = ("compact", "migrate")


def _as_of(text: str) -> datetime | int:
    """A table version (``12``) or an ISO 8601 time (``2026-11-30T12:00:00+00:00``; local time when no zone)."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a table version nor an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.astimezone()


def add_catalog(parser: argparse.ArgumentParser) -> None:
    from voxflow.storage.catalog import TABLES, VACUUM_RETENTION_HOURS

    parser.add_argument(
        "table", choices=(*TABLES, *ACTIONS), help="a table to print; compact: maintain; migrate: convert a store"
    )
    parser.add_argument("--columns", help="comma-separated columns to show")
    parser.add_argument("--limit", type=int, default=50, help="last N rows (default 50)")
    parser.add_argument(
        "--as-of", type=_as_of, metavar="TIME_OR_VERSION", help="the table as it was then (time travel)"
    )
    parser.add_argument("--tables", help="compact: comma-separated tables (default all)")
    parser.add_argument(
        "--retention-hours",
        type=int,
        default=VACUUM_RETENTION_HOURS,
        help=f"compact: keep what versions of the last N hours need (default {VACUUM_RETENTION_HOURS})",
    )
    add_store_options(parser, models=False)
    parser.set_defaults(func=catalog)


def catalog(args: argparse.Namespace) -> int:
    from voxflow.flows.settings import store_settings
    from voxflow.storage.catalog import Catalog
    from voxflow.storage.store import open_store

    if args.table == "compact":
        return compact(args)
    catalog = Catalog(open_store(store_settings(args.storage_block)))
    if args.table == "migrate":
        return migrate(catalog)
    return show(catalog, args)


def show(catalog, args: argparse.Namespace) -> int:
    import pandas as pd

    frame = catalog.frame(args.table, as_of=args.as_of)
    if args.columns:
        frame = frame[args.columns.split(",")]
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 60):
        print(frame.tail(args.limit).to_string(index=False) if len(frame) else f"(no rows in {args.table})")
    return 0


def compact(args: argparse.Namespace) -> int:
    from voxflow.flows.catalog_maintenance import catalog_maintenance

    tables = args.tables.split(",") if args.tables else None
    done = catalog_maintenance(tables=tables, retention_hours=args.retention_hours, storage_block=args.storage_block)
    print_rows(done, ("table", "files_before", "files_after", "removed", "version"))
    return 0


def migrate(catalog) -> int:
    from voxflow.storage.catalog import TABLES

    rows = [{"table": table, "rows migrated": catalog.migrate(table)} for table in TABLES]
    print_rows(rows, ("table", "rows migrated"))
    print("the catalog is in Delta Lake format" + ("" if any(r["rows migrated"] for r in rows) else " (already)"))
    return 0


COMMANDS = {"catalog": add_catalog}
