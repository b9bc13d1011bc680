"""Models kept warm in a worker process: bounded, least recently used dropped first.

One cache per model kind (segmentation, NSM), keyed by what identifies a model folder as loaded
(folder, configuration, folds, device ...). Bounded by count, and on a GPU also by free memory:
before loading another model, least recently used ones are dropped until ``headroom_bytes`` are
free. So two profiles with two models run on one worker without reloading per job, and a third
model does not exhaust the GPU.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from kneenode.logs import get_logger

log = get_logger(__name__)
V = TypeVar("V")

#: Process-wide bounds, set once by the worker process from ``jobs.warm_models`` /
#: ``jobs.gpu_headroom_mb`` (:func:`configure`); the defaults are those settings' defaults.
LIMITS = {"max_items": 2, "headroom_bytes": 2048 * 1024**2}


def configure(max_items: int, headroom_mb: int) -> None:
    """Set the bounds of every cache in this process."""
    LIMITS["max_items"] = max(1, int(max_items))
    LIMITS["headroom_bytes"] = max(0, int(headroom_mb)) * 1024**2


def cuda_free_bytes(device: str) -> int | None:
    """Free memory of a CUDA device (None on CPU or without torch loaded)."""
    torch = sys.modules.get("torch")
    if torch is None or not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def release_cuda_cache() -> None:
    """Give memory of dropped models back to the driver."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class WarmCache(Generic[V]):
    """A bounded LRU of loaded models (thread-safe; loading happens under the lock)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a model was loaded (tests, logs)

    def loaded(self) -> list[str]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def get(self, key: str, load: Callable[[], V], device: str = "cpu") -> V:
        """The model for ``key``, loading it (and dropping old ones) when not warm."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            self._make_room(device)
            value = load()
            self.loads += 1
            self._items[key] = value
            return value

    def _make_room(self, device: str) -> None:
        dropped = False
        while len(self._items) >= LIMITS["max_items"]:
            self._drop()
            dropped = True
        if dropped:
            release_cuda_cache()
        while self._items:
            free = cuda_free_bytes(device)
            if free is None or free >= LIMITS["headroom_bytes"]:
                break
            self._drop()
            release_cuda_cache()

    def _drop(self) -> None:
        key, _ = self._items.popitem(last=False)
        log.info("warm model dropped", kind=self.kind, key=key[:200], left=len(self._items))

    def clear(self) -> None:
        """Forget every model."""
        with self._lock:
            self._items.clear()
        release_cuda_cache()
