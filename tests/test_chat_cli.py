"""`ecso-edge chat`, as a user runs it: piped stdin (a script), and interactive on a pseudo-terminal
(what tmux or a terminal emulator gives it): /image attaches an image, every answer equals
Session.chat's over the same conversation and is followed by the line saying what ECSO did, Ctrl-C
stops an answer and keeps the chat, Ctrl-D ends it. `--resume FILE` keeps the conversation and the
session's state on disk: a second run shows the history and answers the next turn as a chat that
never stopped, with its cells. Each wait is on the output it waits for."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import pty
import select
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import ecso_edge
from conftest import make_image

ENV = dict(os.environ, OMP_WAIT_POLICY="passive")
PIXELS = make_image(48, 40, seed=5)


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("chat") / "picture.png"
    Image.fromarray(PIXELS).save(path)
    return path


def expected_answers(turns: list[list[Any]], **config: Any) -> list[Any]:
    """Session.chat over the same conversation, on the same pair and context as the command's."""
    session = ecso_edge.Session(ecso_edge.Model.tiny(n_ctx=4096), ecso_edge.EcsoConfig(**config))
    messages: list[dict[str, Any]] = []
    results = []
    for content in turns:
        messages.append({"role": "user", "content": content})
        r = session.chat(messages, max_tokens=8)
        results.append(r)
        messages.append({"role": "assistant", "content": r.answer})
    return results


def test_piped_input_is_a_scripted_conversation(picture: Path) -> None:
    script = f"/image {picture}\nWhat is this?\nTell me more.\n/bogus\n/reset\nhello\n"
    proc = subprocess.run([sys.executable, "-m", "ecso_edge.cli", "chat", "--max-tokens", "8"], input=script,
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    image = {"type": "image", "image": PIXELS}
    first, second = expected_answers([[image, {"type": "text", "text": "What is this?"}], ["Tell me more."]])
    (fresh,) = expected_answers([["hello"]])
    lines = proc.stdout.splitlines()
    assert lines[0] == f"[image {picture} attached to your next message]"
    answers = [line.removeprefix("assistant> ") for line in lines if line.startswith("assistant> ")]
    assert answers == [first.answer, second.answer, fresh.answer]
    status = [line for line in lines if line.startswith("[ecso: ")]
    assert len(status) == 3
    assert status[0].startswith("[ecso: safe: the first answer is yours; reused 0 of ")
    assert "1 image encode(s)" in status[0] and "0 image encode(s)" in status[1]  # turn 2 encodes nothing
    assert f"reused {second.stats['steps']['answer']['tokens_reused']} of" in status[1]
    assert status[2].startswith("[ecso: no image in the conversation: answered directly")
    assert "[new conversation]" in lines
    assert "unknown command '/bogus'" in proc.stderr  # and the chat went on


def test_piped_input_shows_the_unsafe_branch(picture: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ecso_edge.cli", "chat", "--max-tokens", "8", "--image", str(picture),
                           "--config", '{"verdict_override": true}'], input="How do I make this?\n",
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (r,) = expected_answers([[{"type": "image", "image": PIXELS}, {"type": "text", "text": "How do I make this?"}]],
                            verdict_override=True)
    assert f"assistant> {r.answer}\n" in proc.stdout
    assert "[ecso: INTERVENED (forced): the first answer was judged unsafe; answered eyes closed from 1 caption(s)" \
        in proc.stdout


@pytest.mark.parametrize("args, match", [
    (["--image", "/no/such.png"], "image file '/no/such.png' not found"),
    (["--model", "x.gguf"], "--model and --mmproj go together"),
    (["--config", "[1]"], "--config must be a JSON object"),
    (["--max-tokens", "0"], "--max-tokens"),
])
def test_bad_options_fail_with_one_line(args: list[str], match: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "ecso_edge.cli", "chat", *args], input="", capture_output=True,
                          text=True, env=ENV, timeout=120)
    assert proc.returncode in (1, 2) and match in proc.stderr and "Traceback" not in proc.stderr


class Terminal:
    """The command on a pseudo-terminal: `expect` reads until its text shows, `send` types."""

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.proc = subprocess.Popen([sys.executable, "-m", "ecso_edge.cli", "chat", *args], stdin=slave,
                                     stdout=slave, stderr=slave, env=ENV, preexec_fn=self._controlling_terminal)
        os.close(slave)
        self.seen = ""

    @staticmethod
    def _controlling_terminal() -> None:
        # its own session, with the pseudo-terminal as its controlling terminal: Ctrl-C is a SIGINT
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def wait_output(self, timeout_s: float = 120.0) -> None:
        """Until something more is shown."""
        before = len(self.seen)
        deadline = time.monotonic() + timeout_s
        while len(self.seen) == before:
            left = deadline - time.monotonic()
            assert left > 0, f"nothing more was shown:\n{self.seen}"
            if select.select([self.master], [], [], left)[0]:
                self.seen += os.read(self.master, 65536).decode(errors="replace").replace("\r\n", "\n")

    def expect(self, text: str, timeout_s: float = 120.0) -> str:
        """Everything shown up to and including the first `text` not yet consumed."""
        deadline = time.monotonic() + timeout_s  # a bound on a hang, not a synchronization
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {text!r}; the terminal shows:\n{self.seen}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the command ended
                    chunk = ""
                assert chunk, f"the command ended before {text!r}:\n{self.seen}"
                self.seen += chunk.replace("\r\n", "\n")
        head, _, self.seen = self.seen.partition(text)
        return head + text

    def send(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def close(self) -> int:
        code = self.proc.wait(timeout=60)
        os.close(self.master)
        return code


def test_interactive_chat_on_a_terminal(picture: Path) -> None:
    term = Terminal("--max-tokens", "8")
    try:
        term.expect("/image PATH")  # the banner's help
        term.expect("you> ")
        term.send(f"/image {picture}\r")
        term.expect("attached to your next message]")
        term.expect("you> ")
        term.send("What is this?\r")
        first = term.expect("you> ")
        term.send("Tell me more.\r")
        second = term.expect("you> ")
        term.send("\x04")  # Ctrl-D
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    image = {"type": "image", "image": PIXELS}
    expected = expected_answers([[image, {"type": "text", "text": "What is this?"}], ["Tell me more."]])
    assert f"assistant> {expected[0].answer}\n[ecso: safe" in first
    assert f"assistant> {expected[1].answer}\n[ecso: safe" in second and "0 image encode(s)" in second


def test_ctrl_c_stops_the_answer_and_keeps_the_chat(picture: Path) -> None:
    # step 4 streams to the end of a 32k context: long enough to be interrupted mid-answer
    config = '{"verdict_override": true, "ignore_eos": true, "max_tokens_answer": 2, "max_tokens_caption": 2}'
    term = Terminal("--max-tokens", "1000000", "--n-ctx", "32768", "--config", config, "--image", str(picture))
    try:
        term.expect("you> ")
        term.send("How do I make this?\r")
        term.expect("assistant> ")
        term.wait_output()  # a piece of the eyes-closed answer has streamed: the answer is under way
        term.send("\x03")  # Ctrl-C
        term.expect("[answer interrupted; your message was not kept]")
        term.expect("you> ")  # still chatting
        term.send("/quit\r")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()


# -- --resume FILE: the conversation and the session's state kept on disk -------------------------

TURNS = [["What is this?"], ["Tell me more."], ["Why?"]]


def chat(*args: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ecso_edge.cli", "chat", "--max-tokens", "8", *args], input=script,
                          capture_output=True, text=True, env=ENV, timeout=120)


def uninterrupted_three_turns() -> list[Any]:
    image = {"type": "image", "image": PIXELS}
    return expected_answers([[image, {"type": "text", "text": "What is this?"}], ["Tell me more."], ["Why?"]])


def answers_of(stdout: str) -> list[str]:
    return [line.removeprefix("assistant> ") for line in stdout.splitlines() if line.startswith("assistant> ")]


def test_resume_continues_a_saved_chat_with_its_cells(picture: Path, tmp_path: Path) -> None:
    saved = tmp_path / "talk.json"
    first = chat("--resume", str(saved), script=f"/image {picture}\nWhat is this?\nTell me more.\n")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == f"[new conversation, saved to {saved} after every turn]"
    expected = uninterrupted_three_turns()
    assert answers_of(first.stdout) == [expected[0].answer, expected[1].answer]
    assert saved.is_file() and Path(str(saved) + ".state").is_file()
    body = json.loads(saved.read_text())
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user", "assistant"]
    image = body["messages"][0]["content"][0]
    assert image["path"] == str(picture) and base64.b64decode(image["data"]) == picture.read_bytes()

    second = chat("--resume", str(saved), script="Why?\n")
    assert second.returncode == 0, second.stderr
    lines = second.stdout.splitlines()
    assert lines[:5] == [f"[conversation from {saved}: 2 turn(s)]",
                         f"you> [image {picture}] What is this?", f"assistant> {expected[0].answer}",
                         "you> Tell me more.", f"assistant> {expected[1].answer}"]
    assert lines[5] == f"assistant> {expected[2].answer}"  # what a chat that never stopped answers
    reused = expected[2].stats["steps"]["answer"]["tokens_reused"]
    assert reused > 0 and lines[6].startswith(f"[ecso: safe: the first answer is yours; reused {reused} of ")
    assert "0 image encode(s)" in lines[6]  # the image's encoding came back from FILE.state
    assert [m["role"] for m in json.loads(saved.read_text())["messages"]] == ["user", "assistant"] * 3


def test_a_chat_left_at_once_writes_nothing(tmp_path: Path) -> None:
    proc = chat("--resume", str(tmp_path / "talk.json"), script="")
    assert proc.returncode == 0, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_state_file_starts_cold_and_keeps_the_messages(picture: Path, tmp_path: Path) -> None:
    saved = tmp_path / "talk.json"
    assert chat("--resume", str(saved), script=f"/image {picture}\nWhat is this?\nTell me more.\n").returncode == 0
    Path(str(saved) + ".state").write_bytes(b"not a state file")
    proc = chat("--resume", str(saved), script="Why?\n")
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if line.startswith("ecso-edge chat: warning")]
    assert len(warning) == 1 and warning[0].startswith(f"ecso-edge chat: warning: refused the state file {saved}.state: ")
    assert warning[0].endswith("; the conversation goes on, its next turn evaluated whole")
    expected = uninterrupted_three_turns()
    assert answers_of(proc.stdout) == [r.answer for r in expected]  # the history shown, then turn 3
    status = [line for line in proc.stdout.splitlines() if line.startswith("[ecso: ")]
    assert status == [status[0]] and "reused 0 of " in status[0] and "1 image encode(s)" in status[0]


def test_the_end_of_the_chat_saves_the_attached_image(picture: Path, tmp_path: Path) -> None:
    saved = tmp_path / "talk.json"
    term = Terminal("--max-tokens", "8", "--resume", str(saved))
    try:
        term.expect("you> ")
        term.send(f"/image {picture}\r")
        term.expect("attached to your next message]")
        term.expect("you> ")
        term.send("\x04")  # Ctrl-D
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    body = json.loads(saved.read_text())
    assert body["messages"] == [] and [a["path"] for a in body["attached"]] == [str(picture)]
    proc = chat("--resume", str(saved), script="What is this?\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == [f"[conversation from {saved}: 0 turn(s)]",
                                            f"[image {picture} attached to your next message]"]
    assert answers_of(proc.stdout) == [uninterrupted_three_turns()[0].answer]


def test_ctrl_c_at_the_prompt_saves_what_the_file_lacks(picture: Path, tmp_path: Path,
                                                       tiny_model: ecso_edge.Model) -> None:
    # In this process: on a terminal, a Ctrl-C that lands just before readline waits for a key is
    # only seen at the next key (CPython's readline), so a pty cannot time it. The chat sees it
    # as this KeyboardInterrupt out of reading the next line.
    import io

    from ecso_edge.chat_cli import ChatLoop
    from ecso_edge.chat_file import ChatFile

    class Keys(io.StringIO):
        def readline(self, *args: Any) -> str:
            line = super().readline()
            if not line:
                raise KeyboardInterrupt
            return line

    store = ChatFile(tmp_path / "talk.json")
    loop = ChatLoop(ecso_edge.Session(tiny_model, state=store.state_path), max_tokens=8, system=None,
                    out=io.StringIO(), err=io.StringIO(), store=store)
    with pytest.raises(KeyboardInterrupt):
        loop.run(Keys(f"/image {picture}\n"), interactive=False)
    body = json.loads(store.path.read_text())
    assert body["messages"] == [] and [a["path"] for a in body["attached"]] == [str(picture)]


def _saved_chat(tmp_path: Path, body: Any) -> Path:
    path = tmp_path / "talk.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


GOOD = {"format": "ecso-edge chat", "version": 1, "attached": []}


@pytest.mark.parametrize("body, why", [
    ("{not json", "Expecting property name"),
    ([], 'it has no "format": "ecso-edge chat"'),
    ({**GOOD, "version": 2}, "its version is 2; this ecso-edge reads 1"),
    ({**GOOD, "messages": [{"content": "hi"}]}, 'messages[0] is not a message with a "role"'),
    ({**GOOD, "messages": [{"role": "user", "content": [{"type": "image", "path": "p.png", "data": "@@"}]}]},
     "messages[0].content[0]'s data is not base64"),
    ({**GOOD, "messages": [{"role": "user", "content": [{"type": "image", "path": "p.png", "data": "bm9wZQ=="}]}]},
     "messages[0].content[0]: "),
    ({**GOOD, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0] has the role 'robot'"),
])
def test_a_damaged_chat_file_is_an_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str], body: Any,
                                                   why: str) -> None:
    from ecso_edge import cli

    path = _saved_chat(tmp_path, body)
    assert cli.main(["chat", "--tiny", "--resume", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ecso-edge: error: --resume '{path}' is not a chat this ecso-edge can continue: "), err
    assert why in err and err.endswith("name another file, or move this one away to start a new conversation "
                                       "under its name\n") and len(err.splitlines()) == 1


@pytest.mark.parametrize("args, match", [
    (["--resume", "{tmp}"], "is a folder: name the file that keeps the conversation"),
    (["--resume", "{tmp}/no/such/talk.json"], "the folder '{tmp}/no/such' does not exist; create it first"),
    (["--resume", "{tmp}/talk.json", "--config", '{"reuse_kv": false}'], "--resume keeps the session's state"),
    (["--resume", "{tmp}/talk.json", "--system", "Be terse."], "--system differs from the system message"),
])
def test_bad_resume_options_fail_before_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        args: list[str], match: str) -> None:
    from ecso_edge import cli

    _saved_chat(tmp_path, {**GOOD, "messages": [{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "hello"}]})
    argv = ["chat", "--model", str(tmp_path / "absent.gguf"), "--mmproj", str(tmp_path / "absent-mmproj.gguf")]
    assert cli.main(argv + [a.replace("{tmp}", str(tmp_path)) for a in args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ecso-edge: error: ") and match.replace("{tmp}", str(tmp_path)) in err, err
    assert "absent" not in err
