"""Streaming of the decided answer, cancellation (cancel() and Ctrl-C), the GIL being released
during long calls, and two threads sharing one session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ecso_edge
from ecso_edge import CancelledError, EcsoConfig, Session
from step_gate import SIGINT_PRELUDE, StepGate

QUERY = "Describe the picture."
# Long enough to be interrupted: the tiny model fills its context (2048) at ~1 ms a token.
LONG = dict(ignore_eos=True)


@pytest.mark.parametrize("unsafe", [False, True], ids=["safe", "unsafe"])
def test_streamed_pieces_join_to_the_answer(tiny_model: ecso_edge.Model, image: np.ndarray, unsafe: bool) -> None:
    pieces: list[str] = []
    r = Session(tiny_model, EcsoConfig(verdict_override=unsafe)).run(
        image, QUERY, max_tokens=16, on_token=pieces.append
    )
    assert len(pieces) > 1
    assert "".join(pieces) == r.answer
    assert r.answer == (r.steps[3].text if unsafe else r.initial_answer)


def test_first_answer_is_held_back_until_the_judge_has_spoken(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    # On the unsafe path the first answer must never reach the stream: only step 4's text does.
    pieces: list[str] = []
    r = Session(tiny_model, EcsoConfig(verdict_override=True)).run(image, QUERY, max_tokens=16, on_token=pieces.append)
    assert r.initial_answer != r.answer
    assert "".join(pieces) == r.answer


def test_answer_streams_live(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    pieces: list[str] = []
    r = Session(tiny_model).answer(image, QUERY, max_tokens=16, on_token=pieces.append)
    assert "".join(pieces) == r.answer and len(pieces) > 1


def test_iterator_form_yields_the_answer_and_keeps_the_result(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    stream = Session(tiny_model, EcsoConfig(verdict_override=True)).stream(image, QUERY, max_tokens=16)
    text = "".join(stream)
    assert stream.result is not None and text == stream.result.answer


def test_leaving_the_iterator_early_cancels_the_request(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    # The unsafe path streams step 4 token by token; a one-token caption leaves step 4 the rest of
    # the context (about 1,900 tokens), so the first piece comes with nearly all of it still to go.
    session = Session(tiny_model, EcsoConfig(verdict_override=True, max_tokens_caption=1, **LONG))
    generated: list[tuple[int, int]] = []
    queued_more = threading.Event()

    def progress(step: str, phase: str, done: int, total: int) -> None:
        if step == "text_only" and phase == "generate":
            generated.append((done, total))
            if done >= 8:
                queued_more.set()

    with session.stream(image, QUERY, max_tokens=100000, on_progress=progress) as stream:
        next(iter(stream))
        # The worker runs ahead of the reader: pieces it queued before close() was called are
        # part of the cancelled request and must not come out of the stream afterwards.
        assert queued_more.wait(timeout=60)
    # close() has joined the run: it stopped inside step 4, short of its limit, with no result
    assert stream.result is None
    done, total = generated[-1]
    assert total > 1000 and done < total, generated[-1]
    with pytest.raises(CancelledError):
        next(iter(stream))
    r = session.run(image, QUERY, max_tokens=4)  # the session is usable afterwards
    assert len(r.steps[0].tokens) == 4


def test_callback_exception_propagates_and_stops_the_request(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    calls = 0

    def boom(piece: str) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("consumer failed")

    session = Session(tiny_model, EcsoConfig(verdict_override=True, **LONG))
    with pytest.raises(RuntimeError, match="consumer failed"):
        session.answer(image, QUERY, max_tokens=100000, on_token=boom)
    assert calls == 1
    assert len(session.run(image, QUERY, max_tokens=3).steps) == 4


def test_cancel_from_another_thread_stops_promptly(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    session = Session(tiny_model, EcsoConfig(verdict_override=True, **LONG))
    token = ecso_edge.CancelToken()
    gate = StepGate(token, "answer", at=5)
    events: list[tuple[str, str, int]] = []

    def progress(step: str, phase: str, done: int, total: int) -> None:
        events.append((step, phase, done))
        gate(step, phase, done, total)  # holds the call here until the cancel lands

    def cancel_when_generating() -> None:
        gate.reached.wait()
        session.cancel()  # the call in progress: this one

    canceller = threading.Thread(target=cancel_when_generating)
    canceller.start()
    with pytest.raises(CancelledError, match="cancelled during (generation of )?step 'answer'"):
        session.run(image, QUERY, max_tokens=100000, on_progress=progress, cancel=token)
    canceller.join()
    # promptly: the call stopped where the cancel found it, before one more token was generated
    assert events[-1] == ("answer", "generate", 5), events[-3:]
    assert len(session.run(image, QUERY, max_tokens=3).steps) == 4


def test_a_cancel_before_the_call_starts_is_not_lost_and_reaches_no_other_call(
    tiny_model: ecso_edge.Model, image: np.ndarray
) -> None:
    session = Session(tiny_model, EcsoConfig(verdict_override=True))
    early = ecso_edge.CancelToken()
    early.cancel()
    ticks: list[str] = []
    with pytest.raises(CancelledError, match="cancelled during step 'answer'"):
        session.run(image, QUERY, max_tokens=4, cancel=early, on_progress=lambda *a: ticks.append(a[0]))
    assert ticks == []  # nothing was evaluated
    session.cancel()  # no call in progress: does nothing, and the next call is not hit
    assert len(session.run(image, QUERY, max_tokens=3).steps) == 4
    with pytest.raises(CancelledError):
        session.answer(image, QUERY, max_tokens=4, cancel=early)  # a cancelled token stays cancelled


def test_closing_a_stream_before_its_run_starts_stops_it(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    session = Session(tiny_model, EcsoConfig(verdict_override=True, **LONG))
    # The session is busy with another call, so the stream's run is waiting for it when the stream
    # is closed: the close must still stop that run (it used to be reset when the run began).
    token = ecso_edge.CancelToken()
    gate = StepGate(token, "answer")
    busy = threading.Thread(target=lambda: pytest.raises(CancelledError, session.run, image, QUERY,
                                                         max_tokens=100000, on_progress=gate, cancel=token))
    busy.start()
    gate.reached.wait()
    stream = session.stream(image, QUERY, max_tokens=100000)
    stream.cancel()  # the stream's own token; its run has not started
    token.cancel()
    busy.join()
    with pytest.raises(CancelledError):
        list(stream)
    stream.close()
    assert len(session.run(image, QUERY, max_tokens=3).steps) == 4


def test_gil_is_released_while_generating(tiny_model: ecso_edge.Model, image: np.ndarray) -> None:
    # Another Python thread, woken while step 1 generates, cancels the call. It can run only if the
    # call lets go of the GIL: with the switch interval raised out of reach, a call that held it
    # would not be preempted at its progress callbacks either, and would run all of its tokens.
    session = Session(tiny_model, EcsoConfig(verdict_override=True, **LONG))
    token = ecso_edge.CancelToken()
    generating = threading.Event()
    cancelled_by_thread: list[bool] = []

    def progress(step: str, phase: str, done: int, total: int) -> None:
        if step == "answer" and phase == "generate":
            generating.set()

    def cancel_once_generating() -> None:
        generating.wait()
        token.cancel()
        cancelled_by_thread.append(True)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    canceller = threading.Thread(target=cancel_once_generating)
    try:
        canceller.start()
        with pytest.raises(CancelledError, match="step 'answer'"):
            session.run(image, QUERY, max_tokens=100000, on_progress=progress, cancel=token)
    finally:
        sys.setswitchinterval(interval)
        generating.set()
        canceller.join()
    assert cancelled_by_thread == [True]


def test_two_threads_sharing_a_session_get_the_sequential_results(tiny_model: ecso_edge.Model) -> None:
    from conftest import make_image

    session = Session(tiny_model, EcsoConfig(verdict_override=True))
    images = [make_image(seed=s) for s in range(4)]
    expected = [[s.tokens for s in session.run(img, QUERY, max_tokens=8).steps] for img in images]
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for rep in range(3):
                idx = (k + rep) % len(images)
                results[(k, rep)] = (idx, [s.tokens for s in session.run(images[idx], QUERY, max_tokens=8).steps])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 12
    for idx, tokens in results.values():
        assert tokens == expected[idx]


def test_ctrl_c_stops_a_run_promptly_with_keyboard_interrupt(tiny_paths: tuple[Any, Any]) -> None:
    text, mmproj = tiny_paths
    script = SIGINT_PRELUDE + textwrap.dedent(
        f"""
        import sys, time, numpy as np, ecso_edge
        sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
        from step_gate import StepGate
        m = ecso_edge.Model({str(text)!r}, {str(mmproj)!r}, n_threads=1, n_ctx=4096)
        s = ecso_edge.Session(m, ecso_edge.EcsoConfig(verdict_override=True, ignore_eos=True))
        img = np.zeros((32, 32, 3), np.uint8)
        token = ecso_edge.CancelToken()
        gate = StepGate(token, "answer", on_reached=lambda: print("generating", flush=True))
        events = []
        def progress(step, phase, done, total):
            events.append((step, phase, done))
            gate(step, phase, done, total)
        try:
            s.run(img, "describe", max_tokens=1000000, on_progress=progress, cancel=token)
        except KeyboardInterrupt:
            print("interrupted", *events[-1], flush=True)
            sys.exit(7)
        print("finished", flush=True)
        """
    )
    env = dict(os.environ, OMP_WAIT_POLICY="passive")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "generating"  # the run is held inside step 1
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 7, out
    # promptly: the call stopped where Ctrl-C found it, held at step 1's first token
    assert out.split() == ["interrupted", "answer", "generate", "1"], out
