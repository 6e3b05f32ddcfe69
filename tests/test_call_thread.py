"""How a call from the main thread runs (csrc/bindings/interruptible.hpp): on one long-lived call
thread, with the main thread asleep until the work ends or a signal arrives. A forked child gets
a call thread of its own, and a signal wake-up fd someone else installed is left in place."""

from __future__ import annotations

import os
import signal
import socket

import numpy as np

import ecso_edge
from ecso_edge import Session


def test_a_forked_child_runs_calls_on_a_call_thread_of_its_own(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    expected = Session(tiny_model).answer(image, "hi", max_tokens=4).answer  # the parent's call thread exists now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's call thread did not survive fork()
        try:
            got = Session(tiny_model).answer(image, "hi", max_tokens=4).answer
            os.write(write, got.encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    got = os.read(read, 4096).decode()
    os.close(read)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert got == expected
    assert Session(tiny_model).answer(image, "hi", max_tokens=4).answer == expected  # the parent's still runs


def test_a_wakeup_fd_installed_by_someone_else_is_kept(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    previous = signal.set_wakeup_fd(ours.fileno())
    try:
        r = Session(tiny_model).answer(image, "hi", max_tokens=4)
        assert r.answer
        assert signal.set_wakeup_fd(ours.fileno()) == ours.fileno()  # still theirs after the call
    finally:
        signal.set_wakeup_fd(previous)
        ours.close()
        theirs.close()


def test_no_wakeup_fd_is_left_installed_after_a_call(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    Session(tiny_model).answer(image, "hi", max_tokens=4)
    assert signal.set_wakeup_fd(-1) == -1
