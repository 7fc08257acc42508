"""A real, tiny OpenAI-compatible chat server on loopback that serves scripted answers.

It exercises the real client over HTTP: requests are parsed, recorded, and answered by a
script (a function of the request and its arrival index) that can also fail on purpose.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, dict[str, Any] | str, dict[str, str]]
Script = Callable[[dict[str, Any], int], Reply]


def completion(text: str) -> Reply:
    """A 200 answer in the chat-completions format."""
    return (
        200,
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split())},
        },
        {},
    )


class ChatServer:
    """``with ChatServer(script) as srv: ChatClient(srv.base_url, ...)``.

    Attributes:
        requests: every chat request body received, in arrival order.
        headers: the headers of each request.
    """

    def __init__(self, script: Script):
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(
                self, status: int, body: dict[str, Any] | str, headers: dict[str, str]
            ) -> None:
                data = (json.dumps(body) if isinstance(body, dict) else body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                self._send(200, {"object": "list", "data": [{"id": "scripted"}]}, {})

            def do_POST(self) -> None:  # noqa: N802
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": "not found"}, {})
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer._lock:
                    index = len(outer.requests)
                    outer.requests.append(body)
                    outer.headers.append(dict(self.headers))
                self._send(*outer.script(body, index))

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
