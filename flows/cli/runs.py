"""``voxflow status [FLOW_RUN_ID]`` and ``voxflow report``: how runs are going and how they went.

``status`` asks the Prefect API (the task runs of a flow run are named ``<stage> · <file>``) and the
catalog (each stage run's time and cache hit); ``report`` reads only the catalog
(:mod:`voxflow.flows.analytics`) and writes a self-contained HTML file, optionally the same as a Prefect
Markdown artifact.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from voxflow.flows.cli.common import add_store_options, print_rows

RECENT_RUNS = 10
DONE, RUNNING, FAILED, WAITING = "done", "running", "failed", "pending"
PRECEDENCE = (FAILED, RUNNING, WAITING, DONE)  # a stage's state among its runs on one file: the first found
STATE_OF = {  # a Prefect state type: what it means for a stage of a file
    "COMPLETED": DONE,
    "RUNNING": RUNNING,
    "FAILED": FAILED,
    "CRASHED": FAILED,
    "CANCELLED": FAILED,
    "CANCELLING": RUNNING,
}
NOT_STARTED_SUFFIX = re.compile(r"-[0-9a-f]{3}$")  # a task run never started keeps Prefect's "<name>-<key>" name
REPORT_ARTIFACT = "voxflow-report"


def _catalog(storage_block: str | None):
    from voxflow.flows.settings import store_settings
    from voxflow.storage.catalog import Catalog
    from voxflow.storage.store import open_store

    return Catalog(open_store(store_settings(storage_block)))


# ---- status --------------------------------------------------------------------------------------------


def file_progress(task_runs: list[dict]) -> list[dict]:
    """Per file (from the task run names ``<stage> · <file>``): % of its stages done, the stage it is in, and
    each stage's state, in the order they started."""
    files: dict[str, dict[str, str]] = {}
    for run in sorted(task_runs, key=lambda r: r["created"]):
        stage, _, file = NOT_STARTED_SUFFIX.sub("", run["name"]).partition(" · ")
        state = STATE_OF.get(run["state_type"], WAITING)
        stages = files.setdefault(file or "(run)", {})
        # a stage run many times on a file (voice-replace: once per line) is as far as its least advanced run
        stages[stage] = min(stages.get(stage, DONE), state, key=PRECEDENCE.index)
    rows = []
    for file, stages in files.items():
        done = sum(state == DONE for state in stages.values())
        current = next((s for s, state in stages.items() if state in (RUNNING, FAILED)), None)
        current = current or next((s for s, state in stages.items() if state == WAITING), "")
        rows.append(
            {
                "file": file,
                "progress": f"{100 * done / len(stages):.0f}%",
                "now": f"{current} ({stages[current]})" if current else "finished",
                "stages": " ".join(f"{s}:{state}" for s, state in stages.items()),
            }
        )
    return rows


def _flow_run_rows(client, flow_runs) -> list[dict]:
    names = {f.id: f.name for f in client.read_flows()}
    return [
        {
            "flow_run_id": str(run.id),
            "flow": names.get(run.flow_id, ""),
            "name": run.name,
            "state": run.state.name if run.state else "",
            "started": f"{run.start_time:%Y-%m-%d %H:%M:%S}" if run.start_time else "",
            "duration_s": round(run.total_run_time.total_seconds(), 1),
        }
        for run in flow_runs
    ]


def status(args: argparse.Namespace) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        if not args.flow_run_id:
            runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=RECENT_RUNS)
            if args.json:
                print(json.dumps(_flow_run_rows(client, runs), indent=2))
            elif runs:
                print_rows(
                    _flow_run_rows(client, runs), ("flow_run_id", "flow", "name", "state", "started", "duration_s")
                )
            else:
                print("no flow runs yet")
            return 0
        try:
            run = client.read_flow_run(args.flow_run_id)
        except (ObjectNotFound, ValueError):
            raise ValueError(f"no flow run {args.flow_run_id!r} on this Prefect API") from None
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        header = _flow_run_rows(client, [run])[0]
    rows = file_progress(
        [{"name": t.name, "state_type": t.state.type.value if t.state else "", "created": t.created} for t in task_runs]
    )
    _add_stage_times(rows, str(run.id), args.storage_block)
    message = run.state.message if run.state and run.state.message else ""
    if args.json:
        print(json.dumps({**header, "message": message, "files": rows}, indent=2))
        return 0
    print(f"{header['flow']} {header['name']} ({header['flow_run_id']}): {header['state']}, {header['duration_s']} s")
    if message:
        print(message)
    if rows:
        print()
        print_rows(rows, ("file", "progress", "now", "compute_s", "cached", "stages"))
    return 0


def _add_stage_times(rows: list[dict], flow_run_id: str, storage_block: str | None) -> None:
    """Each file's compute seconds and cache hits in this flow run, from the catalog's stage_runs."""
    from voxflow.flows.analytics import with_files
    from voxflow.storage.errors import StorageError

    for row in rows:
        row.update(compute_s="", cached="")
    try:
        catalog = _catalog(storage_block)
        runs = catalog.frame("stage_runs")
        mine = with_files(runs[runs["flow_run_id"] == flow_run_id], catalog.frame("files"), catalog.frame("artifacts"))
    except (StorageError, OSError) as e:  # the store may be elsewhere or down: the API's view still stands
        print(f"note: stage times not shown ({e})", file=sys.stderr)
        return
    for row in rows:
        of_file = mine[mine["file"] == row["file"]]
        hits = of_file["cache_hit"].fillna(False).astype(bool)
        row.update(compute_s=round(float(of_file.loc[~hits, "duration_s"].sum()), 1), cached=int(hits.sum()))


# ---- report --------------------------------------------------------------------------------------------


def report(args: argparse.Namespace) -> int:
    from voxflow.flows import analytics

    since = analytics.parse_since(args.since)
    until = analytics.parse_since(args.until) if args.until else datetime.now(UTC)
    catalog = _catalog(args.storage_block)
    analysis = analytics.analyse(
        catalog.frame("stage_runs"), catalog.frame("files"), catalog.frame("artifacts"), since, until
    )
    plots = analytics.figures(analysis)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    partial.write_text(analytics.to_html(analysis, plots), encoding="utf-8")
    partial.replace(output)  # a reader never finds half a report
    if args.artifact:
        import warnings

        from prefect.artifacts import create_markdown_artifact

        with warnings.catch_warnings():  # Prefect frowns on artifacts outside a run; a report belongs to no run
            warnings.filterwarnings("ignore", message="Artifact creation outside of a flow", category=FutureWarning)
            create_markdown_artifact(
                key=REPORT_ARTIFACT,
                markdown=analytics.to_markdown(analysis, plots),
                description=analytics.headline(analysis),
            )
    if args.quiet:
        print(output)
        return 0
    print(analytics.headline(analysis))
    if not analysis.stages.empty:
        shown = analysis.stages.assign(
            hit_rate=[f"{v:.0%}" for v in analysis.stages["hit_rate"]],
            share=[f"{v:.0%}" for v in analysis.stages["share"]],
        ).round(2)
        print()
        print_rows(
            shown.to_dict("records"),
            ("stage", "computed", "cache_hits", "hit_rate", "retries", "failed", "compute_s", "x_real_time", "share"),
        )
    if analysis.recommendation:
        print(f"\nrecommendation: {analysis.recommendation}")
    for failure in analysis.failures.itertuples():
        print(f"failed: {failure.file}: {failure.stage}: {failure.error_class}: {failure.error_message}")
    print(
        f"\nwrote {output} ({len(plots)} plots)" + (f"; Prefect artifact {REPORT_ARTIFACT!r}" if args.artifact else "")
    )
    return 0


def add_status(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("flow_run_id", nargs="?", help="a flow run's id (default: list the latest runs)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    add_store_options(parser, models=False)
    parser.set_defaults(func=status)


def add_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", default="7d", help="from when: 90m, 24h, 7d ago or an ISO 8601 time (default 7d)")
    parser.add_argument("--until", help="until when (default now), as --since")
    parser.add_argument(
        "-o", "--output", default="voxflow-report.html", help="the HTML file (default voxflow-report.html)"
    )
    parser.add_argument(
        "--artifact", action="store_true", help=f"also publish it as the Prefect Markdown artifact {REPORT_ARTIFACT!r}"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only where the report went")
    add_store_options(parser, models=False)
    parser.set_defaults(func=report)


COMMANDS = {"status": add_status, "report": add_report}
