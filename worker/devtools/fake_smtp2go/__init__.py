"""A local stand-in for SMTP2Go's v3 HTTP API and its webhooks.

The real service cannot be used in tests or benchmarks (it costs money, sends real mail and cannot be told to
fail on demand), so this server reproduces its documented wire formats - the responses of ``/email/send`` and
``/activity/search`` and the webhook payloads - and adds the failures the worker must survive: 5xx, 429 with
``X-Ratelimit-Reset``, and ambiguous timeouts where the mail *was* accepted. It records every accepted send by
its ``X-Mailworker-Id`` so tests can prove nothing went out twice. Standard library plus ``requests`` only.

One module per concern: :mod:`.wire` (response shapes), :mod:`.scripted` (canned answers), :mod:`.handler`
(HTTP transport), :mod:`.send`, :mod:`.activity` and :mod:`.webhooks` (the endpoints and event delivery),
:mod:`.server` (``FakeSMTP2Go`` itself) and :mod:`.cli` (``main``). Import from here, not from those.
"""

from worker.devtools.fake_smtp2go.cli import main
from worker.devtools.fake_smtp2go.scripted import Scripted
from worker.devtools.fake_smtp2go.server import FakeSMTP2Go

__all__ = ["FakeSMTP2Go", "Scripted", "main"]
