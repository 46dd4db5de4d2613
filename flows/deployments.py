"""Deployments of every flow in the registry: served by ``voxflow serve`` (``flow.serve``, no work pool)
and written to ``prefect.yaml`` for the work-pool route (``prefect deploy --all``).

``prefect.yaml`` is generated from :data:`~voxflow.flows.registry.FLOWS` (``python -m
voxflow.flows.deployments > prefect.yaml``; a test checks it is current). ``ingest-folder`` runs on a
cron schedule (every 10 minutes by default) over the inbox folder or bucket prefix, one run at a time;
every deployment can also be run on demand from the UI's parameter form.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from voxflow.flows.registry import FLOWS, INGEST_FOLDER, PER_FILE, FlowEntry, flow_entry

DEFAULT_INBOX = "inbox"
WORK_POOL = "voxflow"
YAML_HEADER = """\
# Generated from flows/registry.py by `python -m voxflow.flows.deployments > prefect.yaml`: edit the
# registry, not this file (tests/test_registry.py checks that they agree).
#
# Deployments for the work-pool route (see README "Scaling out"):
#   prefect work-pool create voxflow --type process
#   prefect deploy --all              # from this folder
#   prefect worker start --pool voxflow   # on each machine
# `voxflow serve` serves the same flows without a work pool.
"""


def _concurrency() -> Any:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def deployment(entry: FlowEntry, inbox: str, cron: str | None = None, interval_s: float | None = None) -> Any:
    """The served deployment of one flow; the inbox watcher's schedule is ``cron`` (its default) or every
    ``interval_s`` seconds, other scheduled flows keep their own."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval

    options: dict[str, Any] = {}
    if entry.inbox_parameter:
        options["parameters"] = {**entry.parameters, entry.inbox_parameter: inbox}
    if entry.cron:
        watcher = entry.inbox_parameter is not None
        options["schedule"] = Interval(interval_s) if watcher and interval_s else Cron((watcher and cron) or entry.cron)
    if entry.one_run_at_a_time:  # a tick that finds the previous run still working is cancelled
        options["concurrency_limit"] = _concurrency()
    served = entry.load().to_deployment(
        name=entry.name,
        description=entry.description,
        tags=list(entry.tags),
        entrypoint_type=EntrypointType.MODULE_PATH,
        **options,
    )
    if entry is INGEST_FOLDER:  # the form's params: one typed form per pipeline, not raw JSON
        # Prefect builds the schema from the signature (params: dict, so that the flow imports no pipeline);
        # RunnerDeployment keeps it in a private attribute, which Prefect's own code edits the same way
        served._parameter_openapi_schema = type(served._parameter_openapi_schema)(
            **typed_params(served._parameter_openapi_schema.model_dump())
        )
    return served


def typed_params(schema: dict[str, Any]) -> dict[str, Any]:
    """``ingest-folder``'s schema with ``params`` as a choice among the per-file flows' options forms."""
    from pydantic import TypeAdapter

    definitions = schema.setdefault("definitions", {})
    choices = []
    for name in PER_FILE:
        options_type = flow_entry(name).pipeline().options_type
        form = TypeAdapter(options_type).json_schema(ref_template="#/definitions/{model}")
        definitions.update(form.pop("$defs", {}))
        definitions[options_type.__name__] = form
        choices.append({"$ref": f"#/definitions/{options_type.__name__}", "title": f"{name} options"})
    params = schema["properties"]["params"]
    params.pop("type", None)
    params["anyOf"] = [*choices, {"type": "null"}]
    return schema


def deployments(inbox: str | None = None, cron: str | None = None, interval_s: float | None = None) -> list:
    """One deployment per flow, named after the flow; ``ingest-folder`` watches ``inbox`` on ``cron``
    (default every 10 minutes), or every ``interval_s`` seconds when given."""
    if cron and interval_s:
        raise ValueError("give the ingest-folder schedule as a cron expression or an interval, not both")
    inbox = inbox or os.environ.get("VOXFLOW_INBOX") or os.path.abspath(DEFAULT_INBOX)
    return [deployment(entry, inbox, cron, interval_s) for entry in FLOWS]


def serve_all(inbox: str | None = None, cron: str | None = None, interval_s: float | None = None) -> None:
    """Serve every deployment from this process until interrupted."""
    from prefect import serve

    serve(*deployments(inbox, cron, interval_s))


def prefect_yaml() -> str:
    """The ``prefect.yaml`` of every flow in the registry, on the ``voxflow`` process work pool."""
    from importlib.metadata import version

    declared = []
    for entry in FLOWS:
        item: dict[str, Any] = {"name": entry.name, "entrypoint": entry.entrypoint, "description": entry.description}
        item["tags"] = list(entry.tags)
        if entry.parameters:
            item["parameters"] = entry.parameters
        if entry.cron:
            item["schedules"] = [{"cron": entry.cron}]
        if entry.one_run_at_a_time:
            item["concurrency_limit"] = {"limit": 1, "collision_strategy": "CANCEL_NEW"}
        item["work_pool"] = {"name": WORK_POOL}
        declared.append(item)
    body = {"name": "voxflow", "prefect-version": version("prefect"), "build": None, "push": None, "pull": None}
    text = (
        yaml.safe_dump(body, sort_keys=False, width=1000)
        + "\n"
        + yaml.safe_dump({"deployments": declared}, sort_keys=False, width=1000)
    )
    return YAML_HEADER + text


if __name__ == "__main__":
    print(prefect_yaml(), end="")
