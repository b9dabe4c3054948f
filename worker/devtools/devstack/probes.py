"""Readiness probes for ``mailworker dev``: is a port taken, does Redis answer, is the worker consuming.

"Started" is not "ready": the stack announces itself only when every part answers the way its clients will use
it, and the preflight checks use the same probes to refuse a busy port before anything starts.
"""

from __future__ import annotations

import socket
import urllib.request


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return True
        except OSError:
            return False


def redis_ping(url: str, timeout: float = 1.0) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our own http:// URL
            return resp.status == 200
    except OSError:
        return False


def worker_ping(broker_url: str, node: str, timeout: float = 1.0) -> bool:
    """Ping exactly our worker (by node name) over the broker: proof that it consumes, not just runs."""
    from celery import Celery

    probe = Celery("mailworker-dev-probe", broker=broker_url)
    try:
        return bool(probe.control.ping(destination=[node], timeout=timeout))
    except Exception:  # noqa: BLE001 - any broker hiccup just means "not ready yet"
        return False
    finally:
        probe.close()


def _mask_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: show no credentials at all
        return url.rpartition("@")[2]
