"""Request logging off the request path but durable: one writer thread, group commit.

Handlers `reserve()` a slot before doing any work (a full queue answers 429 with
Retry-After at once, so records are never dropped and no tier is paid for a request that
cannot be logged), then `await submit(record)`: the writer drains up to `batch_size`
pending records, commits them in ONE transaction (`Store.log_requests`) and resolves each
waiter, so the response is sent only after its record is committed. A failed batch is
retried one record at a time, so one bad record cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any

from routenlp.store import Store, StoreError

log = logging.getLogger("routenlp.gateway")
_STOP = object()


class QueueFull(Exception):
    """No room for another pending record: the caller answers 429."""


class LogWriter:
    def __init__(self, store: Store, *, max_pending: int = 10_000, batch_size: int = 256) -> None:
        self.store = store
        self.max_pending = int(max_pending)
        self.batch_size = int(batch_size)
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="routenlp-log-writer", daemon=True)
        self._started = False
        self.committed = 0
        self.batches = 0

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def reserve(self) -> None:
        """Claim a slot for one future record; raises QueueFull when none is left."""
        with self._lock:
            if self._pending >= self.max_pending:
                raise QueueFull(f"{self._pending} request records are waiting to be stored")
            self._pending += 1

    def release(self) -> None:
        """Give back a reserved slot that will not be used (request refused before logging)."""
        with self._lock:
            self._pending = max(0, self._pending - 1)

    def submit(self, record: Mapping[str, Any]) -> asyncio.Future[str]:
        """Queue a record (its slot reserved before); the future resolves once committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        self._q.put((dict(record), loop, fut))
        return fut

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued, then stop the thread."""
        if self._started:
            self._q.put(_STOP)
            self._thread.join(timeout)

    # ----------------------------------------------------------------- writer thread
    def _run(self) -> None:
        while True:
            item = self._q.get()
            stop = item is _STOP
            batch = [] if stop else [item]
            while len(batch) < self.batch_size:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            if batch:
                self._write(batch)
            if stop:
                return

    def _write(self, batch: list[Any]) -> None:
        try:
            ids = self.store.log_requests([rec for rec, _, _ in batch])
            results: list[tuple[str | None, Exception | None]] = [(i, None) for i in ids]
        except Exception:  # noqa: BLE001 - find the bad record, keep the good ones
            results = []
            for rec, _, _ in batch:
                try:
                    results.append((self.store.log_request(rec), None))
                except Exception as err:  # noqa: BLE001
                    log.error("could not store request %s: %s", rec.get("id"), err)
                    results.append((None, err if isinstance(err, StoreError) else StoreError(
                        f"could not store the request record: {type(err).__name__}: {err}")))
        with self._lock:
            self._pending = max(0, self._pending - len(batch))
            self.committed += sum(1 for rid, _ in results if rid is not None)
            self.batches += 1
        for (_, loop, fut), (rid, err) in zip(batch, results):
            loop.call_soon_threadsafe(_resolve, fut, rid, err)


def _resolve(fut: asyncio.Future[str], rid: str | None, err: Exception | None) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(str(rid))
