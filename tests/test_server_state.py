"""`ecso-edge serve --state-dir DIR`: a conversation goes on after a restart with the cells it had
(SIGTERM saves; a kill -9 keeps the last periodic save and loses what came after it), a damaged
state file is refused, kept aside and the server starts cold, a bad folder fails before the model
loads, and a save happens only when a request ran since the last one. `--cache-ram MB` bounds what
every slot keeps, together. Each wait is on /health or the server's exit, never on a duration."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest

import ecso_edge
from conftest import make_image
from ecso_edge import EcsoConfig, Session
from serve_helpers import ServerProcess, data_uri, health, png_bytes, wait_for

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from ecso_edge import cli  # noqa: E402
from ecso_edge.server import ServerOptions, create_app  # noqa: E402
from ecso_edge.server.state_store import STATE_FILE_NAME, StateFolder  # noqa: E402

PIXELS = make_image(48, 40, seed=3)
MAX_TOKENS = 10
FIRST = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(png_bytes(PIXELS))}},
                                      {"type": "text", "text": "What is this?"}]}]
FOLLOW_UPS = ["Tell me more.", "Why?"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_model: ecso_edge.Model) -> list[Any]:
    """The three turns as one server that never stops answers them (Session.chat in this process,
    on the server's pair and context: test_server_conversations shows the two agree)."""
    session = Session(tiny_model)
    messages, results = list(FIRST), []
    for follow_up in [*FOLLOW_UPS, None]:
        r = session.chat(messages, max_tokens=MAX_TOKENS)
        results.append(r)
        if follow_up is not None:
            messages += [{"role": "assistant", "content": r.answer}, {"role": "user", "content": follow_up}]
    return results


def turn_messages(results: list[Any], turn: int) -> list[dict[str, Any]]:
    """The conversation a client sends for `turn` (0-based), the earlier answers quoted."""
    messages = list(FIRST)
    for r, follow_up in zip(results[:turn], FOLLOW_UPS):
        messages += [{"role": "assistant", "content": r.answer}, {"role": "user", "content": follow_up}]
    return messages


def ask(server: ServerProcess, messages: list[dict[str, Any]]) -> Any:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120) as c:
        return c.chat.completions.create(model="x", messages=messages)


def cached(reply: Any) -> int:
    return int(reply.usage.prompt_tokens_details.cached_tokens)


def ecso_stats(reply: Any) -> dict[str, Any]:
    return dict((reply.model_extra or {})["ecso"]["stats"])


def two_turns(server: ServerProcess, uninterrupted: list[Any]) -> None:
    for turn in range(2):
        reply = ask(server, turn_messages(uninterrupted, turn))
        assert reply.choices[0].message.content == uninterrupted[turn].answer, turn


def assert_turn_three_continues(server: ServerProcess, uninterrupted: list[Any]) -> None:
    reply = ask(server, turn_messages(uninterrupted, 2))
    expected = uninterrupted[2]
    assert reply.choices[0].message.content == expected.answer
    assert cached(reply) > 0 and cached(reply) == expected.stats["steps"]["answer"]["tokens_reused"]
    assert ecso_stats(reply)["image_encodes"] == 0  # the image's encoding came back from the file


def stop_cleanly(server: ServerProcess) -> None:
    assert server.alive(), server.log()
    assert server.stop() in (0, -signal.SIGTERM), server.log()
    assert "Traceback" not in server.log(), server.log()


def serve_state(folder: Path, logs: Path, *args: str) -> ServerProcess:
    return ServerProcess("--state-dir", str(folder), "--max-tokens", str(MAX_TOKENS), *args, log_dir=logs)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_conversation_goes_on_after_a_restart(tmp_path: Path, uninterrupted: list[Any], stop: int) -> None:
    folder = tmp_path / "state"  # created by the server
    first = serve_state(folder, tmp_path)
    try:
        assert health(first)["state"]["status"] == "new"
        two_turns(first, uninterrupted)
    finally:
        first.proc.send_signal(stop)  # the shutdown saves
        first.proc.wait(timeout=60)
        first.stop()
    assert first.proc.returncode in (0, -stop), first.log()
    assert "Traceback" not in first.log(), first.log()
    assert (folder / STATE_FILE_NAME).is_file()
    assert f"state saved to {folder / STATE_FILE_NAME} (1 conversation(s), 1 image encoding(s))" in first.log()

    second = serve_state(folder, tmp_path)
    try:
        state = health(second)["state"]
        assert state["status"] == "loaded" and state["path"] == str(folder / STATE_FILE_NAME)
        assert state["cache"]["conversations"] == 1 and state["cache"]["images"] == 1
        assert f"state loaded from {folder / STATE_FILE_NAME} (1 conversation(s)" in second.log()
        assert_turn_three_continues(second, uninterrupted)
    finally:
        stop_cleanly(second)


def test_a_kill_9_keeps_the_last_periodic_save(tmp_path: Path, uninterrupted: list[Any]) -> None:
    folder = tmp_path / "state"
    first = serve_state(folder, tmp_path, "--state-save-s", "1")
    try:
        two_turns(first, uninterrupted)
        state = wait_for(first, lambda h: (h["state"]["last_save"] or {}).get("requests") == 2)["state"]
        assert state["last_save"]["ok"] is True and state["last_save"]["error"] is None
        assert state["unsaved_requests"] == 0 and state["cache"]["conversations"] == 1
    finally:
        first.proc.kill()  # no shutdown: only the periodic save is on disk
        first.stop()
    assert first.proc.returncode == -signal.SIGKILL
    second = serve_state(folder, tmp_path)
    try:
        assert health(second)["state"]["status"] == "loaded"
        assert_turn_three_continues(second, uninterrupted)
    finally:
        stop_cleanly(second)


def test_a_kill_9_loses_what_no_save_holds(tmp_path: Path, uninterrupted: list[Any]) -> None:
    folder = tmp_path / "state"
    first = serve_state(folder, tmp_path, "--state-save-s", "0")  # saves at shutdown only
    try:
        two_turns(first, uninterrupted)
        assert health(first)["state"]["unsaved_requests"] == 2
    finally:
        first.proc.kill()
        first.stop()
    assert not (folder / STATE_FILE_NAME).exists()
    second = serve_state(folder, tmp_path)
    try:
        assert health(second)["state"]["status"] == "new"
        reply = ask(second, turn_messages(uninterrupted, 2))
        assert reply.choices[0].message.content == uninterrupted[2].answer  # the same answer, cold
        assert cached(reply) == 0 and ecso_stats(reply)["image_encodes"] == 1
    finally:
        stop_cleanly(second)


@pytest.fixture(scope="module")
def good_state_file(tiny_model: ecso_edge.Model, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A state file as the server writes one (turn 1 of the conversation), to damage."""
    path = tmp_path_factory.mktemp("good-state") / STATE_FILE_NAME
    session = Session(tiny_model, state=path)
    session.chat(FIRST, max_tokens=MAX_TOKENS)
    session.save_state()
    return path.read_bytes()


def _flip_last_body_byte(data: bytes) -> bytes:
    at = len(data) - 9  # the checksum is the last 8 bytes
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


@pytest.mark.parametrize("damage, why", [
    (lambda good: b"ECSOSTAT but nothing a state file holds", "its format version is "),
    (lambda good: good[: len(good) // 2], "its length does not match its header (truncated?)"),
    (_flip_last_body_byte, "its checksum does not match (the file is damaged)"),
], ids=["garbage", "truncated", "flipped-byte"])
def test_a_damaged_state_file_is_refused_kept_aside_and_the_server_starts_cold(
        tmp_path: Path, uninterrupted: list[Any], good_state_file: bytes, damage: Any, why: str) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    damaged = damage(good_state_file)
    (folder / STATE_FILE_NAME).write_bytes(damaged)
    server = serve_state(folder, tmp_path)
    try:
        state = health(server)["state"]
        assert state["status"].startswith(f"refused: refused the state file {folder / STATE_FILE_NAME}: {why}")
        assert state["cache"]["conversations"] == 0
        kept = folder / (STATE_FILE_NAME + ".refused")
        assert kept.read_bytes() == damaged
        assert not (folder / STATE_FILE_NAME).exists()
        warning = [line for line in server.log().splitlines() if "starting with an empty cache" in line]
        assert len(warning) == 1 and warning[0].startswith("ecso-edge serve: warning: starting with an empty cache: "
                                                           "refused the state file ")
        assert warning[0].endswith(f"; the refused file is kept as {kept}")
        reply = ask(server, turn_messages(uninterrupted, 0))
        assert reply.choices[0].message.content == uninterrupted[0].answer
    finally:
        stop_cleanly(server)
    assert (folder / STATE_FILE_NAME).is_file()  # the shutdown saved a good one in its place


@pytest.mark.parametrize("make, args, match", [
    (lambda d: d.write_text("x"), [], "--state-dir '{d}' is a file, not a folder"),
    (lambda d: d.parent.joinpath("plain").write_text("x"), ["--state-dir", "{d}/../plain/sub"],
     "cannot create the folder"),
    (lambda d: d.joinpath(STATE_FILE_NAME).mkdir(parents=True), [], "is not a regular file; move it away"),
    (lambda d: None, ["--config", '{"reuse_kv": false}'], "--state-dir keeps what the session reuses"),
    (lambda d: None, ["--cache-ram", "1", "--parallel", "2"], "--cache-ram) is 1 MiB for 2 parallel slots"),
    (lambda d: None, ["--cache-ram", "8", "--config", '{"conversation_cache_mib": 8}'],
     "--cache-ram and --config's conversation_cache_mib set the same bound"),
])
def test_a_bad_state_folder_or_cache_bound_fails_before_the_model_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, args: list[str], match: str) -> None:
    folder = tmp_path / "d"
    make(folder)
    argv = ["serve", "--model", str(tmp_path / "absent.gguf"), "--mmproj", str(tmp_path / "absent-mmproj.gguf")]
    if "--state-dir" not in args:
        argv += ["--state-dir", str(folder)]
    argv += [a.replace("{d}", str(folder)) for a in args]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("ecso-edge: error: ") and match.replace("{d}", str(folder)) in err, err
    assert "absent" not in err  # refused before the model's files were looked at


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_a_folder_the_server_cannot_write_fails_at_startup(tmp_path: Path) -> None:
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    with pytest.raises(ecso_edge.ConfigError, match=r"--state-dir '.*read-only' is not writable"):
        StateFolder(folder)


@pytest.mark.parametrize("flag, value", [("--state-save-s", "-1"), ("--state-save-s", "86401"),
                                         ("--cache-ram", "-1"), ("--cache-ram", str((1 << 30) + 1))])
def test_the_numbers_are_range_checked_by_the_parser(capsys: pytest.CaptureFixture[str], flag: str,
                                                     value: str) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--tiny", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be an integer from 0 to " in err and value in err


def test_one_server_per_state_folder(tmp_path: Path) -> None:
    held = StateFolder(tmp_path)
    try:
        with pytest.raises(ecso_edge.ConfigError, match="is in use by another ecso-edge server"):
            StateFolder(tmp_path)
    finally:
        held.release()
    StateFolder(tmp_path).release()  # free again once released


@pytest.fixture
def app_client(tiny_model: ecso_edge.Model, tmp_path: Path) -> Iterator[TestClient]:
    """The app in this process on a state folder, with no timer: each save is called by the test."""
    app = create_app(tiny_model, EcsoConfig(), ServerOptions(state_dir=str(tmp_path / "state"), state_save_s=0))
    with TestClient(app) as client:
        yield client


def test_a_save_happens_only_when_a_request_ran_and_a_failed_save_is_retried(
        app_client: TestClient, tmp_path: Path, uninterrupted: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    saver = app_client.app.state.state_saver  # type: ignore[attr-defined]
    path = tmp_path / "state" / STATE_FILE_NAME
    assert saver.save_if_changed() is False and not path.exists()  # nothing ran: nothing to write
    r = app_client.post("/v1/chat/completions", json={"messages": FIRST, "max_tokens": MAX_TOKENS})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == uninterrupted[0].answer
    assert app_client.get("/health").json()["state"]["unsaved_requests"] == 1

    shutil.rmtree(tmp_path / "state")  # the folder went away under the server
    assert saver.save_if_changed() is False
    state = app_client.get("/health").json()["state"]
    assert state["saves"] == 0 and state["unsaved_requests"] == 1
    assert state["last_save"]["ok"] is False and "cannot write the state file" in state["last_save"]["error"]
    assert "ecso-edge serve: warning: cannot save the state (" in capsys.readouterr().err

    (tmp_path / "state").mkdir()
    assert saver.save_if_changed() is True and path.is_file()
    written = path.stat().st_mtime_ns
    state = app_client.get("/health").json()["state"]
    assert state["saves"] == 1 and state["last_save"]["ok"] is True and state["unsaved_requests"] == 0
    assert state["cache"]["conversations"] == 1
    assert saver.save_if_changed() is False and path.stat().st_mtime_ns == written  # nothing new since


@pytest.mark.parametrize("parallel, cache_ram, per_slot", [(1, None, 1024), (2, None, 1024), (2, 100, 50),
                                                          (3, 100, 33), (2, 0, 0)])
def test_cache_ram_is_the_bound_of_all_slots_together(tiny_model: ecso_edge.Model, parallel: int,
                                                      cache_ram: Any, per_slot: int) -> None:
    app = create_app(tiny_model, EcsoConfig(), ServerOptions(parallel=parallel, cache_ram_mib=cache_ram))
    with TestClient(app) as client:
        assert client.get("/health").json()["state"] is None  # no --state-dir: nothing saved
        assert app.state.queue.session.config.conversation_cache_mib == per_slot


def test_cache_ram_0_keeps_nothing_between_requests(tiny_paths: Any, uninterrupted: list[Any]) -> None:
    # serve() gives the model the same bound (its own image encodings); here the test does
    model = ecso_edge.Model(*tiny_paths, n_threads=1, n_ctx=2048, encoder_cache_mib=0)
    with TestClient(create_app(model, EcsoConfig(), ServerOptions(cache_ram_mib=0))) as client:
        for turn in range(2):
            r = client.post("/v1/chat/completions", json={"messages": turn_messages(uninterrupted, turn),
                                                          "max_tokens": MAX_TOKENS}).json()
            assert r["choices"][0]["message"]["content"] == uninterrupted[turn].answer
            assert r["usage"]["prompt_tokens_details"]["cached_tokens"] == 0 and r["ecso"]["stats"]["image_encodes"] == 1
