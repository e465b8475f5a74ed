"""Image embeddings for the annotator: computed once per image, kept in a bounded LRU cache, and
computed ahead of time for the image the user is likely to open next.

Each cached entry is a predictor (``SamPredictor`` or ``SAM2ImagePredictor``) with its image set, so
a click only runs the prompt encoder and the mask decoder. Two requests for the same image while its
embedding is being computed wait for the one computation. Prefetching runs on one background thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np

from samforge.models.sam import Sam
from samforge.models.sam2 import SAM2Base
from samforge.predict.predictor import SamPredictor
from samforge.predict.sam2_predictor import SAM2ImagePredictor

log = logging.getLogger("samforge.serve")
Predictor = SamPredictor | SAM2ImagePredictor


def make_predictor(model: Sam | SAM2Base, precision: str = "fp32") -> Predictor:
    """The predictor for ``model``: ``SamPredictor`` for SAM, ``SAM2ImagePredictor`` for SAM 2, in ``precision``."""
    if isinstance(model, SAM2Base):
        return SAM2ImagePredictor(model, precision=precision)
    if isinstance(model, Sam):
        return SamPredictor(model, precision=precision)
    raise TypeError(f"model must be a samforge Sam or SAM2Base, got {type(model).__name__}")


class EmbeddingCache:
    """``get(name)`` returns a predictor holding the embedding of image ``name`` (read with ``load``).

    ``capacity``: embeddings kept (least recently used dropped first; a vit_b embedding is 4 MiB). ``precision``:
    the predictors' (see ``SamPredictor``).
    """

    def __init__(self, model: Sam | SAM2Base, load: Callable[[str], np.ndarray], capacity: int = 4,
                 precision: str = "fp32") -> None:
        self.precision = make_predictor(model, precision).precision  # checks the model's type and the precision
        if not callable(load):
            raise TypeError(f"load must be a callable name -> HxWx3 uint8 image, got {type(load).__name__}")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        self.model = model
        self.load = load
        self.capacity = capacity
        self._entries: OrderedDict[str, Predictor] = OrderedDict()
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samforge-prefetch")
        self.seconds: dict[str, float] = {}  # how long each embedding took (for the page's status line)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._entries

    def cached(self) -> list[str]:
        """Names whose embeddings are in memory, least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(self, name: str) -> Predictor:
        """The predictor for image ``name``, computing its embedding if it is not cached."""
        if not isinstance(name, str):
            raise TypeError(f"name must be an image name (str), got {type(name).__name__}")
        with self._lock:
            if name in self._entries:
                self._entries.move_to_end(name)
                return self._entries[name]
            future = self._pending.get(name)
            owner = future is None
            if owner:
                future = self._pending[name] = Future()
        if not owner:
            return future.result()
        try:
            start = time.perf_counter()
            predictor = make_predictor(self.model, self.precision)
            predictor.set_image(self.load(name))
            self.seconds[name] = time.perf_counter() - start
        except BaseException as e:
            with self._lock:
                del self._pending[name]
            future.set_exception(e)
            raise
        with self._lock:
            del self._pending[name]
            self._entries[name] = predictor
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        future.set_result(predictor)
        return predictor

    def prefetch(self, name: str | None) -> Future | None:
        """Compute ``name``'s embedding on the background thread (nothing when None or already cached)."""
        if name is None or name in self:
            return None

        def work() -> None:
            try:
                self.get(name)
            except Exception:  # the foreground request for this image will report it
                log.exception("prefetching the embedding of %s failed", name)

        return self._prefetcher.submit(work)

    def close(self, wait: bool = True) -> None:
        """Stop the background thread (waiting for a prefetch under way, unless ``wait`` is False)."""
        self._prefetcher.shutdown(wait=wait, cancel_futures=True)
