"""`ecso-edge serve`: a local OpenAI-compatible chat server with ECSO protection and a demo page.
Needs the `server` extra (`pip install 'ecso-edge[server]'`: FastAPI, uvicorn, sse-starlette)."""

from __future__ import annotations

from .app import ServerOptions, create_app
from .openai_schema import ChatRequest, RequestError, parse_chat_request
from .request_queue import EcsoJob, QueueFull, RequestQueue
from .runner import serve

__all__ = [
    "ServerOptions",
    "create_app",
    "serve",
    "ChatRequest",
    "RequestError",
    "parse_chat_request",
    "EcsoJob",
    "QueueFull",
    "RequestQueue",
]
