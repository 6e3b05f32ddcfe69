"""The terminal chat's conversation on disk (`ecso-edge chat --resume FILE`). FILE is JSON: the
messages, each image embedded whole (the bytes of the file it was attached from, base64, with that
path for display), and the images attached to the next message; the session's state
(Session.save_state: the conversation's KV cells and image encodings) goes next to it, in
FILE + ".state", so that a resumed chat's next turn evaluates only what is new and encodes no
image again. Both are replaced atomically. A damaged FILE is refused whole, naming the file."""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .atomic_file import replace_text_file
from .errors import ConfigError, EcsoError
from .messages import to_core_messages

__all__ = ["ChatFile", "SavedChat", "Image", "history_lines", "FORMAT", "VERSION"]

FORMAT = "ecso-edge chat"
VERSION = 1


@dataclass(frozen=True)
class Image:
    """An attached image: the bytes the model saw, and the path they were read from."""

    path: str
    data: bytes


@dataclass
class SavedChat:
    """What FILE holds: the messages (as Session.chat takes them; an image part carries its
    `Image` under "image" as bytes and its path under "path") and the images for the next one."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    attached: list[Image] = field(default_factory=list)


class ChatFile:
    """FILE and FILE.state. `check` (before the model loads) refuses a FILE the chat could not
    keep; `load` reads and checks a saved chat; `save` writes one."""

    def __init__(self, path: Union[str, "os.PathLike[str]"], option: str = "--resume") -> None:
        self.path = Path(path)
        self.state_path = Path(str(path) + ".state")
        self._where = f"{option} {str(path)!r}"

    def check(self) -> None:
        """FILE must be a file or absent, in a folder the chat can write."""
        folder = self.path.parent
        if self.path.is_dir():
            raise ConfigError(f"{self._where} is a folder: name the file that keeps the conversation")
        if not folder.is_dir():
            raise ConfigError(f"{self._where}: the folder {str(folder)!r} does not exist; create it first")
        try:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=self.path.name + ".", suffix=".probe")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ConfigError(f"{self._where}: cannot write in {str(folder)!r} ({e.strerror or e}); the chat "
                              "saves the conversation there after every turn") from None

    def exists(self) -> bool:
        return self.path.exists()

    def load(self, max_pixels: int) -> SavedChat:
        """The saved chat, every part checked and every image decoded once (ConfigError naming
        FILE and the place in it, for anything the chat could not continue from)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._refused(str(e)) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise self._refused(f"it has no \"format\": \"{FORMAT}\"")
        if data.get("version") != VERSION:
            raise self._refused(f"its version is {data.get('version')!r}; this ecso-edge reads {VERSION}")
        messages, attached = data.get("messages"), data.get("attached", [])
        if not isinstance(messages, list) or not isinstance(attached, list):
            raise self._refused("\"messages\" and \"attached\" must be lists")
        saved = SavedChat([self._message(m, f"messages[{i}]") for i, m in enumerate(messages)],
                          [self._image(a, f"attached[{k}]") for k, a in enumerate(attached)])
        try:
            # what Session.chat will do with them: a part it would refuse is refused now
            to_core_messages(saved.messages, max_pixels=max_pixels)
            to_core_messages([{"role": "user", "content": [{"type": "image", "image": a.data}
                                                           for a in saved.attached]}], max_pixels=max_pixels)
        except EcsoError as e:
            raise self._refused(str(e)) from None
        return saved

    def save(self, chat: SavedChat) -> None:
        """FILE replaced atomically (an OSError, a full disk say, leaves the previous one)."""
        body = {"format": FORMAT, "version": VERSION, "messages": [_stored_message(m) for m in chat.messages],
                "attached": [_stored_image(a) for a in chat.attached]}
        replace_text_file(self.path, lambda f: json.dump(body, f, ensure_ascii=False, indent=1))

    def _refused(self, why: str) -> ConfigError:
        return ConfigError(f"{self._where} is not a chat this ecso-edge can continue: {why}; name another file, "
                           "or move this one away to start a new conversation under its name")

    def _message(self, message: Any, where: str) -> dict[str, Any]:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise self._refused(f"{where} is not a message with a \"role\"")
        content = message.get("content")
        if isinstance(content, str):
            return {"role": message["role"], "content": content}
        if not isinstance(content, list):
            raise self._refused(f"{where}.content is neither text nor a list of parts")
        parts: list[dict[str, Any]] = []
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image":
                image = self._image(part, f"{where}.content[{k}]")
                parts.append({"type": "image", "image": image.data, "path": image.path})
            elif kind == "text" and isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            else:
                raise self._refused(f"{where}.content[{k}] is neither a text part nor an image part")
        return {"role": message["role"], "content": parts}

    def _image(self, part: Any, where: str) -> Image:
        path, data = (part.get("path"), part.get("data")) if isinstance(part, dict) else (None, None)
        if not isinstance(path, str) or not isinstance(data, str):
            raise self._refused(f"{where} is not an image with a \"path\" and its \"data\"")
        try:
            return Image(path, base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError) as e:
            raise self._refused(f"{where}'s data is not base64 ({e})") from None


def _stored_image(image: Image) -> dict[str, Any]:
    return {"path": image.path, "data": base64.b64encode(image.data).decode("ascii")}


def _stored_message(message: dict[str, Any]) -> dict[str, Any]:
    content = message["content"]
    if isinstance(content, str):
        return {"role": message["role"], "content": content}
    parts = [{"type": "image", **_stored_image(Image(p["path"], p["image"]))} if p["type"] == "image" else p
             for p in content]
    return {"role": message["role"], "content": parts}


def history_lines(messages: list[dict[str, Any]]) -> list[str]:
    """The conversation as the chat showed it: `you> ` and `assistant> ` lines, each image by its path."""
    lines = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            text = content
        else:
            text = " ".join(f"[image {p['path']}]" if p["type"] == "image" else p["text"] for p in content)
        if m["role"] == "user":
            lines.append(f"you> {text}")
        elif m["role"] == "assistant":
            lines.append(f"assistant> {text}")
        else:
            lines.append(f"[system: {text}]")
    return lines
