"""The OpenAI chat-completions request as the ECSO server reads it: parsing and validation of the
JSON body, the conversation it carries (system, user and assistant messages; text and image parts),
data-URI decoding and the optional fetch of remote images. Every refusal is a `RequestError` carrying the HTTP status to
answer with: whatever a client sends, a fault of the request is a 4xx, never a 500."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from ..arguments import INT32_MAX, UINT32_MAX, int_arg
from ..errors import ConfigError, ImageError
from ..messages import decode_data_uri as _decode_data_uri

__all__ = [
    "RequestError",
    "ChatRequest",
    "ChatMessage",
    "ImageRef",
    "MAX_JSON_DEPTH",
    "MAX_INT_DIGITS",
    "nesting_depth",
    "parse_json_body",
    "parse_chat_request",
    "decode_data_uri",
    "fetch_remote_image",
    "resolve_image",
]


class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP status, the rest goes into the OpenAI
    error object (`message`, `type`, `param`, `code`)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: Optional[str] = None,
        code: Optional[str] = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type

    def to_body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}


# Containers ({} or []) nested deeper than this are refused before the body is parsed. An OpenAI
# chat request needs 5 levels (body, messages, message, content, part, image_url); Python's json
# module recurses once per level, so 50,000 levels would end in a RecursionError (a 500).
MAX_JSON_DEPTH = 64
# Integers longer than this are not converted: no field takes more than 20 digits, and int() of
# a long digit string costs quadratic time (Python >= 3.11 refuses 4,300 digits itself).
MAX_INT_DIGITS = 100

_DEPTH_CHUNK = 1 << 22  # bytes per vectorised pass of the depth scan (bounds its memory)


def nesting_depth(body: bytes, stop_above: Optional[int] = None) -> int:
    """How deeply the objects and arrays of a UTF-8 JSON text nest (0: a scalar), computed without
    recursion by vectorised passes over the bytes (at most about 50 ms per MB), so any input is
    safe to measure; with `stop_above`, the scan may stop at the first 4 MB that go deeper.

    Brackets inside strings do not count: escaped backslashes and quotes are removed first, after
    which every remaining quote opens or closes a string. For a text that is not valid JSON the
    figure bounds what a parser reaches before it stops at the first error."""
    plain = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    parity = level = deepest = 0
    for start in range(0, len(plain), _DEPTH_CHUNK):
        chunk = np.frombuffer(plain, dtype=np.uint8, count=min(_DEPTH_CHUNK, len(plain) - start), offset=start)
        inside = (np.cumsum(chunk == 0x22, dtype=np.int64) + parity) & 1  # 1 within a string
        parity = int(inside[-1])
        step = ((chunk == 0x5B) | (chunk == 0x7B)).astype(np.int64) - ((chunk == 0x5D) | (chunk == 0x7D))
        step[inside == 1] = 0
        levels = np.cumsum(step) + level
        deepest = max(deepest, int(levels.max()))
        level = int(levels[-1])
        if stop_above is not None and deepest > stop_above:
            break
    return deepest


class OverlongInteger:
    """An integer of more than `MAX_INT_DIGITS` digits in the body, kept unconverted: no field
    accepts it, and the field's own check then says which field it was."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def _parse_int(text: str) -> Any:
    digits = len(text.lstrip("-"))
    return OverlongInteger(digits) if digits > MAX_INT_DIGITS else int(text)


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RequestError(400, f"the request body repeats the key {key[:80]!r} in one object; "
                                        "send each key once", param=key[:80])
            seen.add(key)
    return obj


def parse_json_body(body: bytes) -> Any:
    """The request body as a Python value; `RequestError` 400 for anything but UTF-8 JSON that nests
    at most `MAX_JSON_DEPTH` containers and repeats no key within an object (parsers disagree on
    which one wins). A leading UTF-8 byte-order mark is ignored; UTF-16/32 are refused (RFC 8259
    §8.1: JSON exchanged between systems is UTF-8). Python's NaN/Infinity literals and numbers out
    of the float range read as non-finite floats and integers over `MAX_INT_DIGITS` digits as an
    `OverlongInteger`: the check of the field they sit in refuses them, naming the field."""
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        hint = " (it looks like UTF-16 or UTF-32)" if body[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in body[:4] else ""
        raise RequestError(400, f"the request body is not UTF-8{hint}: byte {e.start} is invalid; "
                                "send the JSON encoded as UTF-8") from None
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and nesting_depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise RequestError(400, f"the request body nests objects/arrays deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(text, parse_int=_parse_int, object_pairs_hook=_object_without_duplicates)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"the request body is not valid JSON ({e})") from None
    except RecursionError:  # not reachable under the depth limit; kept so that it can never be a 500
        raise RequestError(400, f"the request body nests too deeply (at most {MAX_JSON_DEPTH} levels)") from None


@dataclass(frozen=True)
class ImageRef:
    """An image part: its URL (a data URI, or an http(s) URL when the server allows remote
    images) and where it sat in the request, for the error that names it."""

    url: str
    param: str  # "messages[i].content[k]"


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" (OpenAI's "developer" too), "user" or "assistant"
    parts: tuple[Union[str, ImageRef], ...]

    @property
    def text(self) -> str:
        return "\n".join(p for p in self.parts if isinstance(p, str))


@dataclass(frozen=True)
class ChatRequest:
    """What one chat-completions request asks of ECSO: the whole conversation, answered after its
    last (user) message."""

    messages: tuple[ChatMessage, ...]
    max_tokens: Optional[int]
    temperature: Optional[float]
    top_p: Optional[float]
    seed: Optional[int]
    stream: bool
    include_first_answer: bool  # the `ecso.first_answer` extension: return step 1's text too

    @property
    def query(self) -> str:
        """The last user message's text: what the judge quotes as QUERY."""
        return self.messages[-1].text

    @property
    def images(self) -> list[ImageRef]:
        return [p for m in self.messages for p in m.parts if isinstance(p, ImageRef)]


# Fields a client may send that ECSO cannot honour; silently ignoring them would change meaning.
_UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "stop", "logprobs", "top_logprobs",
                "response_format", "logit_bias")
# OpenAI's penalties: ECSO's sampler has none, so only 0 (their default) is accepted.
_PENALTIES = ("presence_penalty", "frequency_penalty")


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate an OpenAI chat-completions body; raises `RequestError` (400) saying what is wrong.

    The whole conversation is used: system (and "developer") messages, earlier turns, every image
    where it was sent; it is answered after its last message, which must be the user's. Numbers are
    checked for type and range (booleans are not numbers, integers are not floats), so nothing out
    of range reaches the core."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", param="messages")
    for name in _UNSUPPORTED:
        value = body.get(name)
        if not (value is None or value is False or (isinstance(value, (list, dict)) and not value)):
            raise RequestError(400, f"'{name}' is not supported by the ECSO server", param=name)
    for name in _PENALTIES:
        if _optional_number(body, name, -2.0, 2.0) not in (None, 0.0):
            raise RequestError(400, f"'{name}' is not supported by the ECSO server (only 0)", param=name)
    if _optional_int(body, "n", 1, INT32_MAX) not in (None, 1):
        raise RequestError(400, "only n=1 is supported (one ECSO answer per request)", param="n")

    conversation = tuple(_read_message(index, message) for index, message in enumerate(messages))
    last = conversation[-1]
    if last.role != "user":
        raise RequestError(400, f"the last message (messages[{len(messages) - 1}]) has the role '{last.role}'; "
                                "a conversation is answered after a user message", param=f"messages[{len(messages) - 1}]")
    if not last.parts or not (last.text.strip() or any(isinstance(p, ImageRef) for p in last.parts)):
        raise RequestError(400, "the last user message is empty: send a question (and any images)",
                           param=f"messages[{len(messages) - 1}].content")

    max_tokens = _optional_int(body, "max_tokens", 1, INT32_MAX)
    max_completion_tokens = _optional_int(body, "max_completion_tokens", 1, INT32_MAX)
    if max_tokens is not None and max_completion_tokens is not None and max_tokens != max_completion_tokens:
        raise RequestError(400, "'max_tokens' and 'max_completion_tokens' differ; send one of them",
                           param="max_completion_tokens")
    temperature = _optional_number(body, "temperature", 0.0, 2.0)
    top_p = _optional_number(body, "top_p", 0.0, 1.0)
    if top_p is not None and top_p == 0.0:
        raise RequestError(400, "'top_p' must be greater than 0", param="top_p")
    seed = _optional_int(body, "seed", 0, UINT32_MAX)
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", param="stream")
    extension = body.get("ecso") or {}
    if not isinstance(extension, dict):
        raise RequestError(400, "'ecso' must be an object such as {\"first_answer\": true}", param="ecso")
    first_answer = extension.get("first_answer")
    if first_answer is None:
        first_answer = False
    if not isinstance(first_answer, bool):
        raise RequestError(400, f"'ecso.first_answer' must be true or false, got {_shown(first_answer)}",
                           param="ecso.first_answer")
    return ChatRequest(
        messages=conversation,
        max_tokens=max_completion_tokens if max_completion_tokens is not None else max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stream=stream,
        include_first_answer=first_answer,
    )


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _read_message(index: int, message: Any) -> ChatMessage:
    where = f"messages[{index}]"
    if not isinstance(message, dict) or "role" not in message:
        raise RequestError(400, f"{where} must be an object with a 'role'", param=where)
    role = message["role"]
    if role in ("tool", "function"):
        raise RequestError(400, f"{where} has the role {_shown(role)}: tools are not supported by the ECSO server",
                           param=where)
    if not isinstance(role, str) or role not in _ROLES:
        raise RequestError(400, f"{where} has the role {_shown(role)}; roles are 'system', 'developer', 'user' "
                                "and 'assistant'", param=where)
    role = _ROLES[role]
    content = message.get("content")
    where = f"{where}.content"
    if content is None:
        raise RequestError(400, f"{where} is missing or null (tool calls are not supported)", param=where)
    if isinstance(content, str):
        return ChatMessage(role, (_unicode(content, where),))
    if not isinstance(content, list):
        raise RequestError(400, f"{where} must be a string or a list of content parts", param=where)
    parts: list[Union[str, ImageRef]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            parts.append(_unicode(part[kind], f"{where}[{i}]"))
        elif kind == "image_url" and role == "user":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str) or not url:
                raise RequestError(400, f"{where}[{i}].image_url must carry a 'url' string", param=f"{where}[{i}]")
            parts.append(ImageRef(url, f"{where}[{i}]"))
        elif kind == "image_url":
            raise RequestError(400, f"{where}[{i}] is an image in a '{role}' message; images go in user messages",
                               param=f"{where}[{i}]")
        else:
            got = f"a 'text' part whose text is {_shown(part.get('text'))}" if kind == "text" else _shown(kind)
            raise RequestError(
                400, f"{where}[{i}] must be a 'text' part with a string or an 'image_url' part, got {got}",
                param=f"{where}[{i}]",
            )
    return ChatMessage(role, tuple(parts))


def _unicode(text: str, where: str) -> str:
    """`text`, refused when it has no UTF-8 form (JSON can escape a lone surrogate: "\\udcff")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise RequestError(400, f"{where} is not valid Unicode: character {e.start} is a lone surrogate",
                           param=where) from None
    return text


def _shown(value: object) -> str:
    """A client's value as quoted in an error message: short, whatever was sent."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _optional_int(body: dict[str, Any], name: str, low: int, high: int) -> Optional[int]:
    value = body.get(name)
    if value is None:
        return None
    try:
        return int_arg(name, value, low, high)
    except (TypeError, ConfigError):
        raise RequestError(400, f"'{name}' must be an integer from {low} to {high}, got {_shown(value)}",
                           param=name) from None


def _optional_number(body: dict[str, Any], name: str, low: float, high: float) -> Optional[float]:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise RequestError(400, f"'{name}' must be a number from {low:g} to {high:g}, got {_shown(value)}", param=name)
    if not low <= value <= high:
        raise RequestError(400, f"'{name}' must be a number from {low:g} to {high:g}, got {_shown(value)}", param=name)
    return float(value)


def decode_data_uri(url: str, max_bytes: int) -> bytes:
    """The bytes of a base64 `data:` URI (`data:image/png;base64,...`); RequestError 400 if malformed,
    413 if the decoded image exceeds `max_bytes`."""
    if len(url.partition(",")[2]) * 3 // 4 > max_bytes:
        raise RequestError(413, f"the image is larger than the server's limit of {max_bytes} bytes",
                           param="image_url", code="image_too_large")
    try:
        return _decode_data_uri(url)
    except ImageError as e:
        raise RequestError(400, str(e), param="image_url") from None


def fetch_remote_image(url: str, max_bytes: int, timeout_s: float = 20.0) -> bytes:
    """Download an http(s) image (only when the server was started with --allow-remote-images)."""
    scheme = _scheme(url)
    if scheme not in ("http", "https"):
        raise RequestError(400, f"image URLs must be data URIs or http(s) URLs, not '{scheme}:'", param="image_url")
    request = urllib.request.Request(url, headers={"User-Agent": "ecso-edge-server"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data: bytes = response.read(max_bytes + 1)
    except urllib.error.HTTPError as e:
        raise RequestError(400, f"the image URL answered HTTP {e.code}", param="image_url") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise RequestError(400, f"the image URL could not be fetched ({e})", param="image_url") from e
    if len(data) > max_bytes:
        raise RequestError(413, f"the image at the URL is larger than the server's limit of {max_bytes} bytes",
                           param="image_url", code="image_too_large")
    return data


def _scheme(url: str) -> str:
    try:
        return urllib.parse.urlsplit(url).scheme.lower()
    except ValueError as e:  # "Invalid IPv6 URL", ...
        raise RequestError(400, f"image_url is not a valid URL ({e})", param="image_url") from None


def resolve_image(url: str, *, allow_remote: bool, max_bytes: int) -> bytes:
    """The image bytes a request's `image_url` names. Local files are never read."""
    scheme = _scheme(url)
    if scheme == "data":
        return decode_data_uri(url, max_bytes)
    if scheme in ("http", "https"):
        if not allow_remote:
            raise RequestError(
                400,
                "remote image URLs are refused by this server (start it with --allow-remote-images); "
                "send the image inline as a data URI",
                param="image_url",
                code="remote_image_refused",
            )
        return fetch_remote_image(url, max_bytes)
    raise RequestError(
        400,
        "image_url must be a data URI (data:image/png;base64,...); local file paths and other schemes are refused",
        param="image_url",
    )
