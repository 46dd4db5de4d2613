"""Each flow is declared once, in the registry: the flows, their deployments, ``prefect.yaml``,
``ingest-folder``'s choice of flow and the command line all agree with it."""

from __future__ import annotations

import typing
from pathlib import Path

from voxflow.flows import registry
from voxflow.flows.cli import build_parser
from voxflow.flows.deployments import deployments, prefect_yaml

ROOT = Path(__file__).resolve().parents[1]


def test_prefect_yaml_is_generated_from_the_registry():
    assert (ROOT / "prefect.yaml").read_text() == prefect_yaml(), (
        "prefect.yaml is stale: python -m voxflow.flows.deployments > prefect.yaml"
    )


def test_each_entry_names_its_flow_and_a_per_file_flow_its_pipeline():
    names = [entry.name for entry in registry.FLOWS]
    assert len(set(names)) == len(names)
    for entry in registry.FLOWS:
        flow = entry.load()
        assert flow.name == entry.name
        if entry.per_file:
            pipeline = entry.pipeline()
            assert pipeline.name == entry.name
            options = typing.get_type_hints(flow.fn)["options"]
            assert pipeline.options_type is options  # the options ingest-folder validates are the flow's
            assert "paths" in flow.parameters.properties and entry.parameters == {"paths": []}
    assert registry.flow_entry("lipsync_features") is registry.LIPSYNC_FEATURES


def test_ingest_folder_and_the_command_line_offer_the_per_file_flows():
    folder = registry.INGEST_FOLDER.load()
    assert tuple(folder.parameters.properties["pipeline"]["enum"]) == registry.PER_FILE
    assert set(registry.PER_FILE) == {"ingest", "transcribe", "separate", "lipsync-features", "voice-replace"}
    args = build_parser("ingest-folder").parse_args(["ingest-folder", "inbox", "--flow", "lipsync_features"])
    assert args.flow == "lipsync-features"


def test_served_deployments_come_from_the_registry(tmp_path):
    served = deployments(inbox=str(tmp_path), interval_s=30)
    assert [d.name for d in served] == [entry.name for entry in registry.FLOWS]
    assert [d.entrypoint for d in served] == [entry.entrypoint.replace(":", ".") for entry in registry.FLOWS]
    by_name = {d.name: d for d in served}
    folder = by_name[registry.INGEST_FOLDER.name]
    assert folder.parameters == {"source": str(tmp_path)} and folder.concurrency_limit == 1
    assert [s.schedule.interval.total_seconds() for s in folder.schedules] == [30.0]  # the inbox watcher's
    maintenance = by_name[registry.CATALOG_MAINTENANCE.name]  # keeps its own daily schedule
    assert [s.schedule.cron for s in maintenance.schedules] == ["17 3 * * *"] and maintenance.concurrency_limit == 1
