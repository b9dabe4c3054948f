"""The ``web`` process's gunicorn worker: gevent, plus deadlines for slow clients.

Gunicorn's gevent worker serves each connection in a greenlet, so a client that sends slowly, or not at all,
holds a greenlet and a socket but no process. What it bounds by itself, and what this class adds:

- **Headers.** Gunicorn wraps the read of each request's line and headers in a ``keepalive``-second timeout
  (and in none when ``keepalive`` is 0: ``webhook_app.gunicorn_conf`` never allows that). Here the first
  request on a connection gets ``WEB_HEADER_TIMEOUT`` seconds from the accept to its last header; each later
  request on a kept-alive connection gets ``keepalive`` seconds from the previous response (idle time
  included). A connection that misses its deadline is closed without an answer (slow-header "slowloris"
  clients, and connections that never send a byte).
- **Body.** Gunicorn puts no limit on the time a body takes. Here every read of ``wsgi.input`` must finish
  before ``WEB_BODY_TIMEOUT`` seconds after the headers ended; a read that would pass it raises
  :class:`werkzeug.exceptions.RequestTimeout` into the application (the receiver answers 408) and the
  connection is closed after the answer (slow-body clients, e.g. a byte every few seconds).

The application (``webhook_app.wsgi:app``) knows nothing of this and still runs under any other server.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import gevent
import gevent.local
from gunicorn.workers.ggevent import GeventWorker
from werkzeug.exceptions import RequestTimeout

from webhook_app.gunicorn_conf import body_timeout, header_timeout

T = TypeVar("T")


class DeadlineBody:
    """``wsgi.input`` with a deadline: every read must end by ``deadline`` (``time.monotonic()``)."""

    def __init__(self, body: Any, deadline: float) -> None:
        self._body = body
        self._deadline = deadline
        self.expired = False

    def _call(self, read: Callable[..., T], *args: Any) -> T:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self.expired = True
            raise RequestTimeout()
        timer = gevent.Timeout(remaining)
        timer.start()
        try:
            return read(*args)
        except gevent.Timeout as err:
            if err is not timer:
                raise
            self.expired = True
            raise RequestTimeout() from None
        finally:
            timer.close()

    def read(self, size: int | None = None) -> bytes:
        return self._call(self._body.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._call(self._body.readline, size)

    def readlines(self, size: int | None = None) -> list[bytes]:
        return self._call(self._body.readlines, size)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class WebhookWorker(GeventWorker):
    """``worker_class = "webhook_app.gunicorn_worker.WebhookWorker"`` (set by ``webhook_app.gunicorn_conf``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout()
        self.body_timeout = body_timeout()
        self._connection: Any = None

    def init_process(self) -> None:
        self._connection = gevent.local.local()  # per greenlet, i.e. per connection
        super().init_process()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        self._connection.first = True
        super().handle(listener, client, addr)

    def timeout_ctx(self) -> gevent.Timeout:
        """The deadline for reading the next request line and headers (gunicorn closes the connection when
        it passes: ``False`` makes the timeout end the ``with`` block quietly)."""
        first = getattr(self._connection, "first", False)
        self._connection.first = False
        return gevent.Timeout(self.header_timeout if first else self.cfg.keepalive, False)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        body = DeadlineBody(req.body, time.monotonic() + self.body_timeout)
        req.body = body
        result = super().handle_request(listener_name, req, sock, addr)
        if body.expired:
            # The rest of that body may still be trickling in: do not read it as the next request.
            raise StopIteration()
        return result
