"""`ecso-edge chat`, as a user runs it: piped stdin (a script), and interactive on a pseudo-terminal
(what tmux or a terminal emulator gives it): /image attaches an image, every answer equals
Session.chat's over the same conversation and is followed by the line saying what ECSO did, Ctrl-C
stops an answer and keeps the chat, Ctrl-D ends it. Each wait is on the output it waits for."""

from __future__ import annotations

import fcntl
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
