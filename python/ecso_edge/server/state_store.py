"""The server's state folder (`--state-dir`): checked, created and locked at startup, before the
model loads; the session's kept conversations (KV cells, image encodings, captions) saved to its
state file every `--state-save-s` seconds when a request ran since the last save, and once more on
shutdown; and what /health says of it. The file itself, and its atomic replacement, are the
session's (Session.save_state)."""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Optional, Union

from ..errors import ConfigError
from ..session import Session

__all__ = ["STATE_FILE_NAME", "MAX_SAVE_PERIOD_S", "StateFolder", "StateSaver", "startup_line"]

STATE_FILE_NAME = "server-state.ecso"
MAX_SAVE_PERIOD_S = 24 * 3600  # a longer period is as good as none: 0 says that
# held with flock for the server's life: two servers saving to one file would overwrite each
# other's conversations at every save
_LOCK_FILE_NAME = "server.lock"


class StateFolder:
    """A state folder the server may use: a folder (created if missing) that it can write, whose
    state file is a file if it exists, and that no other server holds. `option` names the setting
    in the errors (`--state-dir` on the command line). The lock lasts until `release`, or the
    process's end (a kill -9 included: the kernel drops it)."""

    def __init__(self, folder: Union[str, "os.PathLike[str]"], option: str = "--state-dir") -> None:
        if not isinstance(folder, (str, os.PathLike)):
            raise ConfigError(f"{option} must be a folder path, not {type(folder).__name__}")
        path = os.fspath(folder)
        if not isinstance(path, str) or not path or "\0" in path:
            raise ConfigError(f"{option} must be a folder path without NUL characters, got {path!r}")
        self.folder = os.path.abspath(path)
        where = f"{option} {path!r}"
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise ConfigError(f"{where} is a file, not a folder: name a folder for the server's state "
                              "(it is created if missing)")
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"{where}: cannot create the folder ({e.strerror or e}); name a folder the "
                              "server may create or write") from None
        self.state_path = os.path.join(self.folder, STATE_FILE_NAME)
        if os.path.lexists(self.state_path) and not os.path.isfile(self.state_path):
            raise ConfigError(f"{where}: {self.state_path} is not a regular file; move it away, the server "
                              "keeps its state file there")
        try:
            # what a save does: a temporary file next to the state file
            fd, probe = tempfile.mkstemp(dir=self.folder, prefix=STATE_FILE_NAME + ".", suffix=".probe")
            os.close(fd)
            os.unlink(probe)
            self._lock_fd: Optional[int] = os.open(os.path.join(self.folder, _LOCK_FILE_NAME),
                                                   os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise ConfigError(f"{where} is not writable ({e.strerror or e}): the server saves its state there; "
                              "name a folder it may write") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.release()
            raise ConfigError(f"{where} is in use by another ecso-edge server; give each server a state folder "
                              "of its own") from None

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # drops the lock
            self._lock_fd = None


class StateSaver:
    """Saves `session`'s kept conversations to the folder's state file: every `every_s` seconds
    (0: never on a timer) when `finished()` (the requests run to an end, whatever their outcome)
    has grown since the last good save, and in `close`. A failed save is logged, reported and tried
    again at the next period; the server goes on serving. `cache` in the report is
    Session.cache_info() as of the load and of the last save (reading it waits for the requests in
    progress, which /health must not)."""

    def __init__(self, folder: StateFolder, session: Session, finished: Callable[[], int], every_s: int) -> None:
        self.folder = folder
        self.session = session
        self.every_s = every_s
        self._finished = finished
        self._saving = threading.Lock()  # one save at a time (it may wait for the requests in progress)
        self._lock = threading.Lock()  # the figures below, held only for moments: /health reads them
        self._saved_finished = 0
        self._saves = 0
        self._last: Optional[dict[str, Any]] = None
        self._cache = session.cache_info()
        self._cache_at = time.time()
        self.status = session.state_status
        self.kept_refused: Optional[str] = None
        if self.status.startswith("refused"):
            # the first save would overwrite it, and a file written for another model, say, may be
            # wanted again: it is kept beside, under a name the server never reads
            try:
                os.replace(folder.state_path, folder.state_path + ".refused")
                self.kept_refused = folder.state_path + ".refused"
            except OSError:
                pass
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if every_s > 0:
            self._thread = threading.Thread(target=self._periodic, name="ecso-server-state", daemon=True)
            self._thread.start()

    def _periodic(self) -> None:
        while not self._stop.wait(self.every_s):
            self.save_if_changed()

    def save_if_changed(self) -> bool:
        """Saves when a request ended since the last good save; whether the file was written."""
        with self._saving:
            finished = self._finished()  # read before the save: a request ending during it is saved next time
            if finished == self._saved_finished:
                return False
            started, clock = time.time(), time.monotonic()
            error: Optional[str] = None
            try:
                self.session.save_state()
            except Exception as e:  # a full disk, a folder removed: keep serving, say so, retry
                error = str(e)
            with self._lock:
                self._last = {"at": started, "ok": error is None, "error": error, "requests": finished,
                              "seconds": time.monotonic() - clock}
                if error is None:
                    self._saved_finished = finished
                    self._saves += 1
            if error is not None:
                again = f"again in {self.every_s} s and at shutdown" if self.every_s else "again at shutdown"
                print(f"ecso-edge serve: warning: cannot save the state ({error}); trying {again}",
                      file=sys.stderr, flush=True)
                return False
            cache = self.session.cache_info()
            with self._lock:
                self._cache, self._cache_at = cache, time.time()
        return True

    def close(self) -> None:
        """Stops the timer, saves what changed (the queue is closed by then), releases the folder."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.save_if_changed():
            print(f"ecso-edge serve: state saved to {self.folder.state_path} ({_sizes(self._cache)})",
                  file=sys.stderr, flush=True)
        self.folder.release()

    def report(self) -> dict[str, Any]:
        """/health's `state`: the file, what became of it at startup, the saves, the cache."""
        with self._lock:
            return {
                "path": self.folder.state_path,
                "status": self.status,
                "save_every_s": self.every_s,
                "saves": self._saves,
                "last_save": None if self._last is None else dict(self._last),
                "unsaved_requests": self._finished() - self._saved_finished,
                "cache": dict(self._cache),
                "cache_at": self._cache_at,
            }


def startup_line(saver: StateSaver) -> str:
    """What the server says of its state file when it starts: one line, a warning when refused."""
    path = saver.folder.state_path
    if saver.status == "loaded":
        return f"ecso-edge serve: state loaded from {path} ({_sizes(saver.report()['cache'])})"
    if saver.status == "new":
        return f"ecso-edge serve: no state file yet; the state will be saved to {path}"
    kept = f"; the refused file is kept as {saver.kept_refused}" if saver.kept_refused else ""
    return f"ecso-edge serve: warning: starting with an empty cache: {saver.status.removeprefix('refused: ')}{kept}"


def _sizes(cache: dict[str, Any]) -> str:
    return f"{cache.get('conversations', 0)} conversation(s), {cache.get('images', 0)} image encoding(s)"
