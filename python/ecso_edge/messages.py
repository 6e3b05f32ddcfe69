"""OpenAI-style chat messages as `Session.chat` takes them, turned into what the core's chat takes:
``(role, [text | (pixels, width, height), ...])`` per message, every image decoded here.

A message is ``{"role": ..., "content": ...}``: the role ``system`` (``developer`` is read as
``system``), ``user`` or ``assistant``; the content a string or a list of parts, each
``{"type": "text", "text": str}``, ``{"type": "image_url", "image_url": {"url": URL}}`` (a
``data:`` URI or a local path; ``file://`` URLs too) or ``{"type": "image", "image": IMAGE}`` (a
path, bytes, a PIL image or an HxWx3 uint8 numpy array). Anything else raises ``ConfigError``
(``ImageError`` for an image that cannot be used), naming ``messages[i].content[k]``."""

from __future__ import annotations

import base64
import binascii
import os
import urllib.parse
from typing import Any, Optional, Sequence, Union

from .errors import ConfigError, ImageError
from .images import load_rgb

__all__ = ["CoreMessage", "CorePart", "to_core_messages", "decode_data_uri"]

CorePart = Union[str, tuple[bytes, int, int]]
CoreMessage = tuple[str, list[CorePart]]

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def decode_data_uri(url: str, *, max_bytes: Optional[int] = None) -> bytes:
    """The bytes of a base64 ``data:`` URI (``data:image/png;base64,...``); ``ImageError`` saying
    what is wrong with it, also when its decoded size is over `max_bytes`."""
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:"):
        raise ImageError("the image data URI has no ',' after its header")
    if not header.endswith(";base64"):
        raise ImageError("the image data URI must be base64-encoded ('data:image/...;base64,...')")
    if max_bytes is not None and len(payload) * 3 // 4 > max_bytes:
        raise ImageError(f"the image is larger than the limit of {max_bytes} bytes")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"the image data URI is not valid base64 ({e})") from None
    if not data:
        raise ImageError("the image data URI is empty")
    return data


def _image_from_url(url: object, where: str) -> Any:
    if not isinstance(url, str) or not url:
        raise ConfigError(f"{where}.image_url must carry a 'url' string (a data: URI or a local path)")
    if url.startswith("data:"):
        return decode_data_uri(url)
    scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url else ""
    if scheme == "file":
        return urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    if scheme:
        raise ConfigError(f"{where}.image_url is a '{scheme}:' URL; ecso-edge reads no network: pass a data: URI, "
                          "a local path or the image itself ({'type': 'image', 'image': ...})")
    return url


def _part(part: object, where: str, max_pixels: int) -> CorePart:
    if isinstance(part, str):
        return part
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        assert isinstance(part, dict)
        text = part.get("text")
        if not isinstance(text, str):
            raise ConfigError(f"{where} is a 'text' part whose 'text' is not a string")
        return text
    if kind in ("image_url", "image"):
        assert isinstance(part, dict)
        try:
            if kind == "image_url":
                value = part.get("image_url")
                image = _image_from_url(value.get("url") if isinstance(value, dict) else value, where)
            else:
                image = part.get("image")
                if image is None:
                    raise ConfigError(f"{where} is an 'image' part without 'image'")
                if isinstance(image, (str, os.PathLike)) and os.fspath(image).startswith("data:"):
                    image = decode_data_uri(os.fspath(image))
            pixels = load_rgb(image, max_pixels=max_pixels)
        except ImageError as e:
            raise ImageError(f"{where}: {e}") from None
        return (pixels.data, pixels.width, pixels.height)
    raise ConfigError(f"{where} must be a text part ({{'type': 'text', 'text': ...}}) or an image part "
                      f"('image_url' or 'image'), got {_shown(part)}")


def to_core_messages(messages: Sequence[Any], *, max_pixels: int) -> list[CoreMessage]:
    """Checks `messages` and decodes their images; see the module's docstring for the shapes."""
    if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Sequence):
        raise ConfigError("messages must be a list of {'role': ..., 'content': ...} dicts, "
                          f"not {type(messages).__name__}")
    out: list[CoreMessage] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ConfigError(f"{where} must be a dict with 'role' and 'content', not {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise ConfigError(f"{where} has the role {_shown(role)}; roles are 'system', 'user' and 'assistant'")
        content = message.get("content")
        if content is None:
            raise ConfigError(f"{where} has no 'content' (tool calls are not supported)")
        if isinstance(content, str):
            parts: list[CorePart] = [content]
        elif isinstance(content, (list, tuple)):
            parts = [_part(p, f"{where}.content[{k}]", max_pixels) for k, p in enumerate(content)]
        else:
            raise ConfigError(f"{where}.content must be a string or a list of parts, not {type(content).__name__}")
        for text in parts:
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as e:
                    raise ConfigError(f"{where} is not valid Unicode: character {e.start} is a lone surrogate") from None
        out.append((_ROLES[role], parts))
    return out


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
