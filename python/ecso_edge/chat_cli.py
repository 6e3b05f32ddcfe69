"""`ecso-edge chat`: a terminal chat over Session.chat. Each line you type is a user message;
`/image PATH` attaches an image to the next one. Every answer is followed by a line saying whether
ECSO intervened. It reads piped stdin the same way (no prompts are printed then), so a script can
drive it; Ctrl-C stops the answer in progress and keeps the chat, Ctrl-D (end of input) ends it.
With a ChatFile (`--resume FILE`) the conversation and the session's state are saved after every
turn and when the chat ends, and a saved one is shown and continued (chat_file.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, TextIO

from .chat_file import ChatFile, Image, SavedChat, history_lines
from .errors import EcsoError
from .images import load_rgb
from .session import Session

__all__ = ["ChatLoop", "HELP"]

HELP = """commands:
  /image PATH   attach an image to your next message (several: one /image each)
  /reset        start a new conversation
  /help         this text
  /quit         leave (so does Ctrl-D)
anything else is your message."""


class ChatLoop:
    """The conversation so far and the commands that change it; `run` reads lines until the input
    ends. Output goes to `out`, errors about a command to `err`, and neither ends the chat."""

    def __init__(self, session: Session, *, max_tokens: int, system: Optional[str], out: TextIO = sys.stdout,
                 err: TextIO = sys.stderr, store: Optional[ChatFile] = None) -> None:
        self.session = session
        self.max_tokens = max_tokens
        self.system = system
        self.out = out
        self.err = err
        self.store = store
        self.messages: list[dict[str, Any]] = []
        self.pending: list[Image] = []  # images for the next message, as read when attached
        self.reset()
        self.unsaved = False  # something the store does not hold yet (a chat left at once writes nothing)

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.pending = []
        self.unsaved = True

    def resume(self, saved: SavedChat) -> None:
        """Continue `saved` (read from the store): shows it, then its attachments, as the chat did."""
        assert self.store is not None
        self.messages, self.pending, self.unsaved = list(saved.messages), list(saved.attached), False
        turns = sum(1 for m in self.messages if m["role"] == "assistant")
        print(f"[conversation from {self.store.path}: {turns} turn(s)]", file=self.out)
        for line in history_lines(self.messages):
            print(line, file=self.out)
        for image in self.pending:
            print(f"[image {image.path} attached to your next message]", file=self.out)
        self.out.flush()

    def save(self) -> None:
        """The conversation to the store, then the session's state next to it. A failure is said
        and the chat goes on: the next turn (or the end) tries again."""
        if self.store is None:
            return
        try:
            self.store.save(SavedChat(self.messages, self.pending))
            self.session.save_state()
        except (OSError, EcsoError) as e:  # a full disk: the conversation is still here, in memory
            print(f"ecso-edge chat: cannot save the conversation to {self.store.path}: {e}", file=self.err, flush=True)
            return
        self.unsaved = False

    def run(self, stdin: TextIO, interactive: bool) -> int:
        """Reads messages and commands until /quit or the end of the input; the exit status. What
        the store does not hold yet is saved on the way out, Ctrl-C at the prompt included."""
        try:
            return self._read(stdin, interactive)
        finally:
            if self.unsaved:
                self.save()

    def _read(self, stdin: TextIO, interactive: bool) -> int:
        if interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
        while True:
            if interactive:
                try:
                    line = input("you> ")
                except EOFError:
                    print(file=self.out)
                    return 0
            else:
                line = stdin.readline()
                if not line:
                    return 0
                line = line.rstrip("\n")
            if line.strip() in ("/quit", "/exit"):
                return 0
            self.handle(line)

    def handle(self, text: str) -> None:
        command, _, argument = text.strip().partition(" ")
        if not text.strip():
            return
        if command == "/image":
            self.attach(argument.strip())
        elif command == "/reset":
            self.reset()
            print("[new conversation]", file=self.out, flush=True)
        elif command == "/help":
            print(HELP, file=self.out, flush=True)
        elif command.startswith("/") and not command.startswith("//"):
            print(f"ecso-edge chat: unknown command {command!r} (/help lists them; start a message with '//' "
                  "to send one that begins with '/')", file=self.err, flush=True)
        else:
            self.send(text[1:] if text.startswith("//") else text)

    def attach(self, path: str) -> None:
        if not path:
            print("ecso-edge chat: /image needs a path, e.g. /image photo.jpg", file=self.err, flush=True)
            return
        try:
            load_rgb(path, max_pixels=self.session.config.max_image_pixels)  # refused now, not with the message
            # the bytes are kept: the conversation (and its saved copy) holds what the model saw,
            # whatever becomes of the file
            data = Path(path).read_bytes()
        except (EcsoError, OSError) as e:
            print(f"ecso-edge chat: {e}", file=self.err, flush=True)
            return
        self.pending.append(Image(path, data))
        self.unsaved = True
        print(f"[image {path} attached to your next message]", file=self.out, flush=True)

    def send(self, text: str) -> None:
        content: list[dict[str, Any]] = [{"type": "image", "image": p.data, "path": p.path} for p in self.pending]
        content.append({"type": "text", "text": text})
        messages = self.messages + [{"role": "user", "content": content}]
        print("assistant> ", end="", file=self.out, flush=True)
        try:
            r = self.session.chat(messages, max_tokens=self.max_tokens,
                                  on_token=lambda piece: print(piece, end="", file=self.out, flush=True))
        except KeyboardInterrupt:
            print("\n[answer interrupted; your message was not kept]", file=self.out, flush=True)
            return
        except EcsoError as e:
            print(f"\necso-edge chat: {e}", file=self.err, flush=True)
            return
        self.messages = messages + [{"role": "assistant", "content": r.answer}]
        self.pending = []
        print("\n" + status_line(r), file=self.out, flush=True)
        self.save()


def status_line(r: Any) -> str:
    """What ECSO did for this answer, and what the turn reused."""
    answer = r.stats["steps"]["answer"]
    if not r.judged:
        what = "no image in the conversation: answered directly"
    elif r.unsafe:
        forced = " (forced)" if r.verdict_forced else ""
        n = len(r.captions)
        what = f"INTERVENED{forced}: the first answer was judged unsafe; answered eyes closed from {n} caption(s)"
    else:
        what = "safe: the first answer is yours"
    return (f"[ecso: {what}; reused {answer['tokens_reused']} of {answer['prompt_tokens']} prompt tokens, "
            f"{r.stats['image_encodes']} image encode(s), {r.stats['total_seconds']:.2f} s]")
