"""The environment, chosen once per flow run: which store, and where stages keep cache records."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from prefect import Task

from voxflow.blocks.models import VoxflowModels
from voxflow.blocks.storage import VoxflowStorage
from voxflow.flows.settings import model_settings, store_settings  # noqa: F401  (flows import them from here)
from voxflow.storage.catalog import Catalog
from voxflow.storage.keys import source_name
from voxflow.storage.settings import StoreSettings
from voxflow.storage.sources import SourceEntry
from voxflow.storage.store import shared_store
from voxflow.tasks.kit.locks import FileLockManager
from voxflow.tasks.kit.models import ModelSettings
from voxflow.tasks.kit.stage import with_results

# A flow's Block parameters: the Block itself (the UI's form offers Prefect's Block picker for it) or a saved
# Block's name (the command line, Python callers).
StorageBlock = VoxflowStorage | str | None
ModelsBlock = VoxflowModels | str | None


def block_name(block: VoxflowStorage | VoxflowModels | str | None) -> str | None:
    """The saved Block's name, given by name or as the Block (a run elsewhere loads it again by that name)."""
    if block is None or isinstance(block, str):
        return block or None
    name = getattr(block, "_block_document_name", None)
    if not name:
        raise ValueError(f"a {type(block).get_block_type_slug()} Block must be saved under a name to be used by a run")
    return name


@dataclass(frozen=True)
class Environment:
    """The store of a flow run, the saved result storage that puts cache records on it, the models, and the
    names of the run's sources as the user wrote them (relative to the folder they were found in)."""

    settings: StoreSettings
    results: Any  # voxflow.blocks.results.VoxflowResults, saved
    models: ModelSettings = ModelSettings()
    names: Mapping[str, str] = field(default_factory=dict)  # source URI -> name

    def stage(self, stage: Task) -> Task:
        """A stage task bound to this run's store for its cache records."""
        return with_results(stage, self.results)

    def naming(self, entries: Iterable[SourceEntry]) -> Environment:
        """This environment, naming the listed sources by their :attr:`SourceEntry.name`."""
        return replace(self, names={**self.names, **{e.uri: e.name for e in entries if e.name}})

    def name_of(self, source_uri: str) -> str:
        """A source's name as listed (its file name when it was not listed in this run)."""
        return self.names.get(source_uri) or source_name(source_uri)


_SAVED: dict[tuple[str | None, str], Any] = {}
_SAVED_LOCK = threading.Lock()


def _saved_results(api_url: str | None, results: Any) -> Any:
    """The result-storage Block as saved on the API, found or saved once per API and store in this process.

    It is saved anonymous, as Prefect saves its own result storage: it is plumbing, and the UI's Blocks list
    (which hides anonymous Blocks) stays the user's. A run that finds one holding the same settings uses it
    (one call) instead of saving another."""
    key = (api_url, results.block_name())
    with _SAVED_LOCK:
        if key not in _SAVED:
            saved = _find_same(results)
            if saved is None:
                results._save_sync(is_anonymous=True)  # Prefect's own way to save an unnamed Block (no public one)
            _SAVED[key] = saved or results
        return _SAVED[key]


def _find_same(results: Any) -> Any | None:
    """A saved anonymous Block of ``results``' type holding the same settings, else None."""
    from prefect.client.orchestration import get_client

    query = {
        "block_documents": {"is_anonymous": {"eq_": True}},
        "block_types": {"slug": {"any_": [type(results).get_block_type_slug()]}},
        "include_secrets": False,
    }
    wanted = results.model_dump(include=set(type(results).model_fields))
    with get_client(sync_client=True) as client:
        documents = client.request("POST", "/block_documents/filter", json=query).json()
    for document in documents:
        data = {name: document["data"].get(name) for name in wanted}
        if data == wanted:
            try:
                return type(results).load_from_ref(document["id"])
            except (ValueError, TypeError, KeyError):  # saved by another version of voxflow
                continue
    return None


def remove_leftovers(settings: StoreSettings) -> None:
    """Remove what killed runs left on this host: half-written temporary files and unheld lock files."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_logger, get_run_logger

    partials = shared_store(settings).remove_stale_partials()
    locks = FileLockManager().remove_stale()
    if partials or locks:
        try:
            logger = get_run_logger()
        except MissingContextError:
            logger = get_logger("voxflow")
        logger.info("removed what killed runs left: %d temporary file(s), %d lock file(s)", partials, locks)


def environment(storage_block: StorageBlock, models_block: ModelsBlock = None) -> Environment:
    """Resolve the store and the models (Blocks or environment); save the result-storage Block (no secrets)."""
    from prefect.settings import get_current_settings

    from voxflow.blocks.results import VoxflowResults

    storage_block, models_block = block_name(storage_block), block_name(models_block)
    settings = store_settings(storage_block)
    Catalog(shared_store(settings)).require_migrated()  # a run never writes half into an old-format catalog
    remove_leftovers(settings)
    results = VoxflowResults.for_store(settings, storage_block)
    return Environment(settings, _saved_results(get_current_settings().api.url, results), model_settings(models_block))
