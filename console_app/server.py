"""``mailworker console``: serve the console with gunicorn (threads; never Flask's development server)."""

from __future__ import annotations

from typing import Any

from flask import Flask

from worker.infrastructure.settings_spec import read


def serve(app: Flask, *, host: str, port: int, workers: int = 1, threads: int = 4) -> None:
    """Run ``app`` under gunicorn in this process (blocks until stopped)."""
    from gunicorn.app.base import BaseApplication

    class _Console(BaseApplication):
        def load_config(self) -> None:
            options = {"bind": f"{host}:{port}", "workers": workers, "threads": threads, "worker_class": "gthread",
                       "timeout": 60, "accesslog": "-", "errorlog": "-",
                       "loglevel": read("LOG_LEVEL").lower(),
                       "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(L)ss'}
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    _Console().run()
