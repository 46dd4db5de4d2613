"""The JSON schema of voxflow's parameter Blocks, closed to other properties.

A flow parameter typed ``VoxflowStorage | str | None`` gets Prefect's Block picker in the UI, which sends a
reference to the saved Block (``{"$ref": {"block_document_id": ...}}``). Prefect validates such a value
against ``oneOf`` [the Block's schema, a reference]; a Block whose fields all have defaults and whose schema
allows other properties matches both, and the run is refused. Closed, the Block's schema no longer matches
a reference.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import schema_extra


def closed_schema(schema: dict[str, Any], model: type) -> None:
    """Prefect's Block schema (``json_schema_extra``), with ``additionalProperties: false``."""
    schema_extra(schema, model)
    schema["additionalProperties"] = False
