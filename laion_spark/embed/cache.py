"""The per-Python-worker model cache: a model loads once per worker process, not per batch or task.

INPUT  -> a ModelSpec and a torch device string
OUTPUT -> the LoadedModel, loaded on first use and kept for the worker's life (PySpark reuses
          Python workers across tasks: spark.python.worker.reuse, on by default)

Models are built where they run (STYLE.md 7): nothing is pickled from the driver but the spec.
At most MAX_MODELS models are held (least recently used dropped), so a long-lived worker of a
notebook session that tries many models does not keep them all.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from laion_spark.embed.model import LoadedModel, ModelSpec, load_model

log = logging.getLogger(__name__)

MAX_MODELS = 4

_models: OrderedDict[tuple[ModelSpec, str], LoadedModel] = OrderedDict()
_lock = threading.Lock()
_loads = 0


def get_model(spec: ModelSpec, device: str) -> LoadedModel:
    """ModelSpec + device -> the worker's LoadedModel (loaded now if this worker has not yet)."""
    global _loads
    key = (spec, device)
    with _lock:
        if key in _models:
            _models.move_to_end(key)
            return _models[key]
        loaded = load_model(spec, device)
        _loads += 1
        _models[key] = loaded
        while len(_models) > MAX_MODELS:
            (old, old_device), _ = _models.popitem(last=False)
            log.info("model cache: dropped %s on %s", old.name, old_device)
        return loaded


def load_count() -> int:
    """How many models this process has loaded (tests: one per worker, not per batch)."""
    return _loads


def clear() -> None:
    """Forget every cached model (tests)."""
    with _lock:
        _models.clear()
