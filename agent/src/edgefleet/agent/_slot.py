"""The model being served, hot-swapped as one reference so requests never see half a swap."""

from __future__ import annotations

import threading

from ._runtime import LoadedModel


class ModelSlot:
    """The model being served. Readers take the reference once and keep it for the request."""

    def __init__(self, model: LoadedModel | None = None) -> None:
        self._model = model
        self._swap_lock = threading.Lock()

    def get(self) -> LoadedModel | None:
        return self._model

    def swap(self, new: LoadedModel | None) -> LoadedModel | None:
        """Serve ``new`` from the next request on; requests in flight finish on the old one."""
        with self._swap_lock:  # only so two swappers each get the right "old" back
            old, self._model = self._model, new
        return old
