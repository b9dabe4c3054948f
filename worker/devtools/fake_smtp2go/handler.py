"""The HTTP layer of the fake: a threaded server and a request handler that routes to the endpoints.

Separate from the endpoints because its concerns are transport ones: bodies without a usable length must not
wedge a keep-alive connection, a client that timed out must not produce a traceback, and start-up must not
stall on reverse DNS. The endpoints themselves live on :class:`~worker.devtools.fake_smtp2go.FakeSMTP2Go`.
"""

from __future__ import annotations

import json
import os
import socketserver
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from worker.devtools.fake_smtp2go.wire import _api_error

if TYPE_CHECKING:
    from worker.devtools.fake_smtp2go.server import FakeSMTP2Go

_VERBOSE = bool(os.environ.get("FAKE_SMTP2GO_VERBOSE"))
_MAX_BODY = 60 * 1024 * 1024  # SMTP2Go takes 50 MB of message; leave room for base64 and JSON


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: 64 worker threads connecting at once overflowed it and the
    # kernel reset connections that had already sent their request ("connection lost after sending"). A real
    # API front end does not do that.
    request_queue_size = 1024
    fake: FakeSMTP2Go

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall start().
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        if _VERBOSE:  # clients dropping connections (read timeouts) are expected here, not worth a traceback
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid Nagle/delayed-ACK stalls
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        if _VERBOSE:
            super().log_message(format, *args)

    def _reply(self, status: int, body: dict | str, headers: dict[str, str]) -> None:
        if isinstance(body, str):
            kind = "html" if body.lstrip()[:1] == "<" else "plain"
            data, ctype = body.encode(), f"text/{kind}; charset=utf-8"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (read timeout); provoking that is the point of some answers
            self.close_connection = True

    def _dispatch(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY or "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True  # cannot find the end of this body, so the connection is unusable
            self._reply(413, _api_error("Body needs a Content-Length under 60 MB", "API_EXCEPTION"), {})
            return
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0].rstrip("/")
        path = path[3:] if path.startswith("/v3/") else path
        fake = self.server.fake
        routes = {"/email/send": fake._handle_send, "/email/batch": fake._handle_batch,
                  "/activity/search": fake._handle_activity,
                  "/suppression/add": fake._handle_suppression_add,
                  "/suppression/view": fake._handle_suppression_view,
                  "/suppression/remove": fake._handle_suppression_remove}
        try:
            if self.command == "POST" and path in routes:
                reply = routes[path](self.headers, body)
            else:
                reply = 404, _api_error(f"Unknown endpoint {self.command} {path}", "NOT_FOUND"), {}
        except Exception as exc:  # noqa: BLE001 - a test double must never take its server thread down
            reply = 500, _api_error(f"fake server error: {exc!r}", "API_EXCEPTION"), {}
        self._reply(*reply)

    do_POST = do_GET = do_PUT = do_DELETE = do_PATCH = _dispatch
