"""EcsoStream: the iterator form of a streamed call (Session.stream, Session.stream_chat)."""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, Optional

from . import _core
from ._core import CancelToken

__all__ = ["EcsoStream"]


_DONE = object()


class EcsoStream:
    """Runs a streamed call (``Session.run`` or ``Session.chat``) on a worker thread and yields its
    pieces.

    Leaving the loop early (``break``, ``close()``, garbage collection) cancels the request.
    """

    def __init__(self, work: Callable[[Callable[[str], None], CancelToken], _core.EcsoResult]) -> None:
        self._queue: "queue.Queue[object]" = queue.Queue()
        self.result: Optional[_core.EcsoResult] = None
        self._error: Optional[BaseException] = None
        # This stream's own token: a close() before the worker's call has begun still stops it.
        self._cancel = CancelToken()
        self._thread = threading.Thread(target=self._work, args=(work,), name="ecso-stream", daemon=True)
        self._thread.start()

    def _work(self, work: Callable[[Callable[[str], None], CancelToken], _core.EcsoResult]) -> None:
        try:
            self.result = work(self._queue.put, self._cancel)
        except BaseException as e:  # re-raised on the consumer's thread
            self._error = e
        finally:
            self._queue.put(_DONE)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        item = self._queue.get()
        if item is _DONE:
            self._thread.join()
            self._queue.put(_DONE)  # later next() calls end too
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            raise StopIteration
        assert isinstance(item, str)
        return item

    def cancel(self) -> None:
        """Cancel the request (also one still waiting to start), without waiting for it to stop."""
        self._cancel.cancel()

    def close(self) -> None:
        """Cancel the request if it is still running and wait for the worker to stop."""
        self._cancel.cancel()
        self._thread.join()
        # Pieces the worker queued before it saw the cancel were never read and belong to a request
        # that is gone: drop them, so the next next() reports how the request ended (CancelledError).
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put(_DONE)

    def __enter__(self) -> "EcsoStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
