"""``voxflow catalog TABLE``: print the rows of a catalog table."""

from __future__ import annotations

import argparse

from voxflow.flows.cli.common import add_store_options


def add_catalog(parser: argparse.ArgumentParser) -> None:
    from voxflow.storage.catalog import TABLES

    parser.add_argument("table", choices=tuple(TABLES))
    parser.add_argument("--columns", help="comma-separated columns to show")
    parser.add_argument("--limit", type=int, default=50, help="last N rows (default 50)")
    add_store_options(parser, models=False)
    parser.set_defaults(func=catalog)


def catalog(args: argparse.Namespace) -> int:
    import pandas as pd

    from voxflow.flows.environment import store_settings
    from voxflow.storage.catalog import Catalog
    from voxflow.storage.store import open_store

    frame = Catalog(open_store(store_settings(args.storage_block))).frame(args.table)
    if args.columns:
        frame = frame[args.columns.split(",")]
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.max_colwidth", 60):
        print(frame.tail(args.limit).to_string(index=False) if len(frame) else f"(no rows in {args.table})")
    return 0


COMMANDS = {"catalog": add_catalog}
