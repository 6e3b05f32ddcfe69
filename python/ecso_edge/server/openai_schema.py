"""The OpenAI chat-completions request as the ECSO server reads it: validation of the JSON body,
extraction of the last user turn (its text and its one image), data-URI decoding and the optional
fetch of remote images. Every refusal is a `RequestError` carrying the HTTP status to answer with."""

from __future__ import annotations

import base64
import binascii
import math
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional

__all__ = [
    "RequestError",
    "ChatRequest",
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


@dataclass(frozen=True)
class ChatRequest:
    """What one chat-completions request asks of ECSO."""

    query: str
    image_url: str  # a data URI, or an http(s) URL when the server allows remote images
    max_tokens: Optional[int]
    temperature: Optional[float]
    top_p: Optional[float]
    seed: Optional[int]
    stream: bool
    include_first_answer: bool  # the `ecso.first_answer` extension: return step 1's text too


# Fields a client may send that ECSO cannot honour; silently ignoring them would change meaning.
_UNSUPPORTED = ("tools", "functions", "stop", "logprobs", "response_format")


def parse_chat_request(body: Any) -> ChatRequest:
    """Validate an OpenAI chat-completions body; raises `RequestError` (400) saying what is wrong.

    ECSO answers one single-turn question about one image, as in the paper: the text and the image
    of the LAST user message are used; system messages and earlier turns are ignored."""
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list", param="messages")
    for name in _UNSUPPORTED:
        if body.get(name) not in (None, [], False):
            raise RequestError(400, f"'{name}' is not supported by the ECSO server", param=name)
    n = body.get("n", 1)
    if n is not None and n != 1:
        raise RequestError(400, "only n=1 is supported (one ECSO answer per request)", param="n")

    user = None
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if not isinstance(message, dict) or "role" not in message:
            raise RequestError(400, f"messages[{index}] must be an object with a 'role'", param=f"messages[{index}]")
        if message["role"] == "user":
            user = (index, message)
            break
    if user is None:
        raise RequestError(400, "no message with role 'user' in 'messages'", param="messages")
    query, images = _read_user_content(*user)
    if not images:
        raise RequestError(
            400,
            "ECSO needs an image: the last user message has no 'image_url' part "
            "(text-only chat is not served; send the image as a data URI in an image_url content part)",
            param=f"messages[{user[0]}].content",
            code="image_required",
        )
    if len(images) > 1:
        raise RequestError(
            400,
            f"the last user message has {len(images)} images; ECSO answers about exactly one",
            param=f"messages[{user[0]}].content",
        )
    if not query.strip():
        raise RequestError(400, "the last user message has no text: ask a question about the image",
                           param=f"messages[{user[0]}].content")

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise RequestError(400, f"'max_tokens' must be a positive integer, got {max_tokens!r}", param="max_tokens")
    temperature = _optional_number(body, "temperature", 0.0, 2.0)
    top_p = _optional_number(body, "top_p", 0.0, 1.0)
    if top_p is not None and top_p == 0.0:
        raise RequestError(400, "'top_p' must be greater than 0", param="top_p")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or seed < 0 or seed >= 2**32):
        raise RequestError(400, f"'seed' must be an integer in [0, 2^32), got {seed!r}", param="seed")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise RequestError(400, "'stream' must be true or false", param="stream")
    extension = body.get("ecso") or {}
    if not isinstance(extension, dict):
        raise RequestError(400, "'ecso' must be an object such as {\"first_answer\": true}", param="ecso")
    return ChatRequest(
        query=query,
        image_url=images[0],
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        stream=stream,
        include_first_answer=extension.get("first_answer") is True,
    )


def _read_user_content(index: int, message: dict[str, Any]) -> tuple[str, list[str]]:
    content = message.get("content")
    where = f"messages[{index}].content"
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise RequestError(400, f"{where} must be a string or a list of content parts", param=where)
    texts: list[str] = []
    images: list[str] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            if not isinstance(url, str) or not url:
                raise RequestError(400, f"{where}[{i}].image_url must carry a 'url' string", param=f"{where}[{i}]")
            images.append(url)
        else:
            raise RequestError(
                400, f"{where}[{i}] must be a 'text' or an 'image_url' part, got {kind!r}", param=f"{where}[{i}]"
            )
    return "\n".join(texts), images


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_number(body: dict[str, Any], name: str, low: float, high: float) -> Optional[float]:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(400, f"'{name}' must be a number, got {value!r}", param=name)
    if not low <= value <= high:
        raise RequestError(400, f"'{name}' must be between {low:g} and {high:g}, got {value}", param=name)
    return float(value)


def decode_data_uri(url: str, max_bytes: int) -> bytes:
    """The bytes of a base64 `data:` URI (`data:image/png;base64,...`); RequestError 400 if malformed,
    413 if the decoded image exceeds `max_bytes`."""
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:"):
        raise RequestError(400, "the image data URI has no ',' after its header", param="image_url")
    if not header.endswith(";base64"):
        raise RequestError(400, "the image data URI must be base64-encoded ('data:image/...;base64,...')",
                           param="image_url")
    if len(payload) * 3 // 4 > max_bytes:
        raise RequestError(413, f"the image is larger than the server's limit of {max_bytes} bytes",
                           param="image_url", code="image_too_large")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(400, f"the image data URI is not valid base64 ({e})", param="image_url") from e
    if not data:
        raise RequestError(400, "the image data URI is empty", param="image_url")
    return data


def fetch_remote_image(url: str, max_bytes: int, timeout_s: float = 20.0) -> bytes:
    """Download an http(s) image (only when the server was started with --allow-remote-images)."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
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


def resolve_image(url: str, *, allow_remote: bool, max_bytes: int) -> bytes:
    """The image bytes a request's `image_url` names. Local files are never read."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
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
