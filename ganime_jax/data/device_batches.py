"""Host batches -> global jax.Arrays over a mesh, and a background prefetcher that keeps the
data-iterator state of the batch last handed out (so checkpoints never skip prefetched data).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ganime_jax.errors import UserError

# How often (seconds) a blocked producer or consumer re-checks whether it should stop.
_POLL_SECONDS = 0.1


def to_global_batch(
    local_batch: Mapping[str, Any], mesh: Mesh, data_axis: str | tuple[str, ...] = "data"
) -> dict[str, jax.Array]:
    """Assembles each process's local batch into global arrays: dim 0 sharded over `data_axis`.

    The other dims are replicated. The global batch is the concatenation of all processes'
    local batches, so every process must pass the same local batch size.
    """
    axes = (data_axis,) if isinstance(data_axis, str) else tuple(data_axis)
    missing = [axis for axis in axes if axis not in mesh.shape]
    if missing:
        raise UserError(
            f"mesh axes {dict(mesh.shape)} lack the data axis {missing}; fix config.mesh"
        )
    shards = int(np.prod([mesh.shape[axis] for axis in axes]))
    sharding = NamedSharding(mesh, PartitionSpec(data_axis))
    global_batch = {}
    for key, value in local_batch.items():
        value = np.asarray(value)
        global_size = value.shape[0] * jax.process_count()
        if global_size % shards:
            raise UserError(
                f"global batch {global_size} ({key!r}) is not divisible by the {shards} "
                f"devices of mesh axis {data_axis!r}; change the batch size or the mesh"
            )
        global_batch[key] = jax.make_array_from_process_local_data(sharding, value)
    return global_batch


class _Failure:
    """Carries an exception from the producer thread to the consumer."""

    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class MeshPrefetcher:
    """Iterates global batches prepared `size` ahead by a background thread.

    `get_state()/set_state()` speak for the wrapped data iterator, at the position of the last
    batch returned by `next()` (not the prefetched ones). With `with_state`, `next()` returns
    `(batch, state)` pairs instead, for trainers that save the state themselves.
    Call `close()` (or use `with`) to stop the thread.
    """

    def __init__(
        self,
        iterator: Iterator,
        mesh: Mesh,
        size: int = 2,
        data_axis: str | tuple[str, ...] = "data",
        with_state: bool = False,
    ):
        if size < 1:
            raise UserError(f"prefetch size must be >= 1, got {size}")
        self._with_state = with_state
        self._iterator = iterator
        self._mesh = mesh
        self._data_axis = data_axis
        self._size = size
        self._has_state = hasattr(iterator, "get_state")
        self._state = iterator.get_state() if self._has_state else None
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()
        self.start_prefetch()

    def start_prefetch(self) -> None:
        """Starts the producer thread unless it runs (grain's checkpoint handler calls this)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self._size)
        self._thread = threading.Thread(
            target=self._produce, args=(self._stop, self._queue), daemon=True
        )
        self._thread.start()

    def _produce(self, stop: threading.Event, out: queue.Queue) -> None:
        while not stop.is_set():
            try:
                local = next(self._iterator)
                state = self._iterator.get_state() if self._has_state else None
                item: Any = (to_global_batch(local, self._mesh, self._data_axis), state)
            except StopIteration:
                item = _END
            except BaseException as error:  # noqa: BLE001 - handed to the consumer
                item = _Failure(error)
            while not stop.is_set():
                try:
                    out.put(item, timeout=_POLL_SECONDS)
                    break
                except queue.Full:
                    continue
            if item is _END or isinstance(item, _Failure):
                return

    def __iter__(self) -> MeshPrefetcher:
        return self

    def __next__(self) -> dict[str, jax.Array] | tuple[dict[str, jax.Array], Any]:
        if self._thread is None:
            raise StopIteration
        while True:
            try:
                item = self._queue.get(timeout=_POLL_SECONDS)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise StopIteration from None
        if item is _END:
            self._queue.put(_END)
            raise StopIteration
        if isinstance(item, _Failure):
            raise item.error
        batch, self._state = item
        return (batch, self._state) if self._with_state else batch

    def get_state(self) -> Any:
        """The wrapped iterator's state after the last batch returned by `next()`."""
        return self._state

    def set_state(self, state: Any) -> None:
        """Drops prefetched batches, moves the wrapped iterator to `state`, and resumes."""
        self.close()
        self._iterator.set_state(state)
        self._state = state
        self.start_prefetch()

    def close(self) -> None:
        """Stops the producer thread and drops the prefetched batches."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None

    def __enter__(self) -> MeshPrefetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def prefetch_to_mesh(
    iterator: Iterator,
    mesh: Mesh,
    size: int = 2,
    data_axis: str | tuple[str, ...] = "data",
    with_state: bool = False,
) -> MeshPrefetcher:
    """Global batches from `iterator`'s local batches, `size` prepared ahead in a thread.

    With `with_state`, yields `(batch, iterator state after that batch)` pairs.
    """
    return MeshPrefetcher(iterator, mesh, size=size, data_axis=data_axis, with_state=with_state)
