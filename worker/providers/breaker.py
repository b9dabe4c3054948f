"""A breaker and a rate limit per provider, shared by every worker process on every host, with their state in
Redis keyed by the provider's name (``smtp2go:eu`` and ``smtp2go:us`` are two).

- **Circuit breaker**: ``SMTP2GO_BREAKER_THRESHOLD`` retryable failures (5xx, timeouts, refused
  connections) within ``SMTP2GO_BREAKER_WINDOW`` seconds open it; while open, sends skip the provider and go to
  the next one in ``MAIL_PROVIDERS`` (or wait, when there is none) for ``SMTP2GO_BREAKER_COOLDOWN``
  seconds; then exactly one worker wins a trial request (``SET NX``); its success closes the breaker, its
  failure re-opens it. An outage costs seconds, not every message's full retry budget.
- **Rate limit**: a global token bucket of ``SMTP2GO_RATE_LIMIT`` sends per second (the plan's limit), and a
  429 pauses every worker until ``X-Ratelimit-Reset`` passes.

Redis being unreachable never stops mail: the protections then fail open (allow) and log once.

:class:`Breaker` puts both in front of any transport: the core sends through it like through any transport and
reads the protections' answers as outcomes (an open breaker is :class:`NotSent` ``declined``; a rate-limit pause
is :class:`NotSent` before anything left).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.infrastructure.config import Settings, get_settings
from worker.providers.base import Accepted, Held, NotSent, Outcome, OutgoingEmail, Transport

log = logging.getLogger(__name__)

_BUCKET_SCRIPT = """
local key, rate, burst, now = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local data = redis.call('HMGET', key, 'tokens', 'ts')
local tokens = tonumber(data[1]) or burst
local ts = tonumber(data[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', key, 'tokens', tokens, 'ts', now)
redis.call('EXPIRE', key, 60)
return tostring(wait)
"""

_PAUSE_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2])) end
return 1
"""

_lock = threading.Lock()
_clients: dict[str, Any] = {}
_warned = False
#: The provider name whose keys carry no name (the keys SMTP2Go's breaker always had).
DEFAULT = "smtp2go"

@dataclass(frozen=True)
class Gate:
    """What to do before an API send: ``ok``, ``paused`` (429 reset pending) or ``open`` (breaker)."""

    verdict: str
    wait: float = 0.0
    #: Why the breaker is open, when an operator must fix it (a refused API key): held mail names it.
    problem: str | None = None
    trial: bool = False
    #: Failures were counted recently; a success must clear them (otherwise it costs no Redis round trip).
    failures: bool = True


def _prefix(name: str = DEFAULT) -> str:
    """Keys live beside the send queue's name, so deployments sharing one Redis DB keep separate state; each
    provider name (``smtp2go:eu``) has its own."""
    from worker.celery_app import app

    suffix = "" if name == DEFAULT else f"{name}:"
    return f"{app.conf.task_default_queue}:protect:{suffix}"


def _redis(settings: Settings) -> Any | None:
    url = settings.broker_url
    if not url.startswith(("redis://", "rediss://", "redis+socket://", "unix://")):
        return None
    with _lock:
        client = _clients.get(url)
        if client is None:
            import redis

            client = _clients[url] = redis.Redis.from_url(
                url.replace("redis+socket://", "unix://"), socket_timeout=1.0, socket_connect_timeout=1.0,
                decode_responses=True)
        return client


def _fail_open(err: Exception) -> None:
    global _warned
    if not _warned:
        log.warning("protections unavailable (Redis %s); sending without breaker/rate limit", type(err).__name__)
        _warned = True


def before_api_send(settings: Settings | None = None, name: str = DEFAULT) -> Gate:
    """Ask the breaker and the rate limit whether this worker may call SMTP2Go now."""
    settings = settings or get_settings()
    client = _redis(settings)
    if client is None:
        return Gate("ok")
    now = time.time()
    try:
        # One round trip for the three keys: this runs before every API send. `failures` only tells
        # record_success whether there is anything to clear (a count racing in after this read is left to
        # expire with its window).
        pause_until, opened_until, failures, problem = client.mget(
            *(_prefix(name) + key for key in ("pause_until", "open_until", "failures", "problem")))
        seen = failures is not None
        if pause_until and float(pause_until) > now:
            return Gate("paused", float(pause_until) - now)
        trial = False
        if opened_until:
            remaining = float(opened_until) - now
            if remaining > 0:
                return Gate("open", remaining, problem=problem)
            # Cool-down over: one trial request across all workers, the others keep avoiding the API.
            if not client.set(_prefix(name) + "trial", "1", nx=True, ex=max(5, int(settings.smtp2go_timeout) + 5)):
                return Gate("open", 1.0, problem=problem)
            trial = True
        if settings.smtp2go_rate_limit > 0:
            wait = _take_token(client, settings, now, name)
            if wait > 0:
                return Gate("paused", wait, trial=trial, failures=seen)
        return Gate("ok", trial=trial, failures=seen)
    except Exception as err:  # noqa: BLE001 - any Redis trouble: fail open
        _fail_open(err)
        return Gate("ok")


def _take_token(client: Any, settings: Settings, now: float, name: str = DEFAULT) -> float:
    """Take a token, sleeping briefly when the bucket refills soon; returns the wait still needed (0 = go)."""
    rate = settings.smtp2go_rate_limit
    burst = max(1.0, rate)
    for _ in range(3):
        wait = float(client.eval(_BUCKET_SCRIPT, 1, _prefix(name) + "bucket", rate, burst, now))
        if wait <= 0:
            return 0.0
        if wait > 1.0:
            return wait
        time.sleep(wait)
        now = time.time()
    return 1.0 / rate


def take_activity_request(settings: Settings | None = None, account: str = "", per_minute: int = 60) -> float:
    """One request of an account's activity-search budget (SMTP2Go: 60 a minute per API key), shared by every
    process that searches -- the periodic reconciler and each batch's settle -- through one token bucket in Redis
    (burst ``per_minute``, refilled at ``per_minute``/60 a second). ``account`` names the budget (a digest of the
    key, never the key). Returns 0 to go, else the seconds until a request is free; fails open without Redis."""
    settings = settings or get_settings()
    client = _redis(settings)
    if client is None or per_minute <= 0:
        return 0.0
    try:
        return float(client.eval(_BUCKET_SCRIPT, 1, f"{_prefix()}activity:{account}", per_minute / 60.0,
                                 float(per_minute), time.time()))
    except Exception as err:  # noqa: BLE001 - any Redis trouble: fail open (each run keeps its own budget)
        _fail_open(err)
        return 0.0


def record_success(settings: Settings | None = None, gate: Gate | None = None, name: str = DEFAULT) -> None:
    settings = settings or get_settings()
    client = _redis(settings)
    if client is None:
        return
    if gate is not None and not gate.failures and not gate.trial:
        return  # nothing to clear: the common case costs no round trip
    try:
        pipe = client.pipeline()
        pipe.delete(_prefix(name) + "failures")
        if gate is not None and gate.trial:
            pipe.delete(_prefix(name) + "open_until", _prefix(name) + "trial", _prefix(name) + "problem")
            log.info("circuit breaker of %s closed: trial request succeeded", name)
        pipe.execute()
    except Exception as err:  # noqa: BLE001
        _fail_open(err)


def record_failure(settings: Settings | None = None, gate: Gate | None = None, name: str = DEFAULT) -> bool:
    """Count a retryable API failure; returns True when this failure opened the breaker."""
    settings = settings or get_settings()
    client = _redis(settings)
    if client is None:
        return False
    try:
        now = time.time()
        if gate is not None and gate.trial:
            _open(client, settings, now, "trial request failed", name=name)
            return True
        pipe = client.pipeline()
        pipe.incr(_prefix(name) + "failures")
        pipe.expire(_prefix(name) + "failures", max(1, int(settings.smtp2go_breaker_window)), nx=True)
        failures = int(pipe.execute()[0])
        if failures >= settings.smtp2go_breaker_threshold and not client.get(_prefix(name) + "open_until"):
            _open(client, settings, now, f"{failures} failures in {settings.smtp2go_breaker_window:g}s", name=name)
            return True
    except Exception as err:  # noqa: BLE001
        _fail_open(err)
    return False


def open_for_problem(problem: str, settings: Settings | None = None, name: str = DEFAULT) -> None:
    """An operator problem (SMTP2Go refused the API key): open the breaker at once, remembering why, so every
    worker holds (or relays) its mail and only one trial request per cool-down meets the bad key."""
    settings = settings or get_settings()
    client = _redis(settings)
    if client is None:
        return
    try:
        _open(client, settings, time.time(), problem, problem=problem, name=name)
    except Exception as err:  # noqa: BLE001
        _fail_open(err)


def _open(client: Any, settings: Settings, now: float, why: str, *, problem: str | None = None,
          name: str = DEFAULT) -> None:
    cooldown = settings.smtp2go_breaker_cooldown
    pipe = client.pipeline()
    if problem:
        pipe.set(_prefix(name) + "problem", problem, ex=int(cooldown * 10) + 60)
    else:
        pipe.delete(_prefix(name) + "problem")
    # Stored at full float precision: rounding to milliseconds could round *up* and report a wait longer
    # than the cool-down (CI caught 1.00006 s for a 1 s cool-down).
    pipe.set(_prefix(name) + "open_until", repr(now + cooldown), ex=int(cooldown * 10) + 60)
    pipe.delete(_prefix(name) + "failures", _prefix(name) + "trial")
    pipe.execute()
    log.warning("circuit breaker of %s opened for %.0fs (%s): sends go to the next provider", name, cooldown, why)


def pause_for_rate_limit(seconds: float, settings: Settings | None = None, name: str = DEFAULT) -> None:
    """A 429: every worker waits until the reset (the longest pause wins)."""
    settings = settings or get_settings()
    client = _redis(settings)
    if client is None:
        return
    until = time.time() + max(0.5, seconds)
    try:
        # One atomic script: the longest pause wins however concurrent 429s interleave across processes.
        client.eval(_PAUSE_SCRIPT, 1, _prefix(name) + "pause_until", repr(until), int(seconds) + 5)
        log.info("%s rate limit: all workers pause %.1fs", name, seconds)
    except Exception as err:  # noqa: BLE001
        _fail_open(err)


def state(settings: Settings | None = None, name: str = DEFAULT) -> dict[str, Any]:
    """For operators (``mailworker stats``/tests): breaker and pause state."""
    settings = settings or get_settings()
    client = _redis(settings)
    if client is None:
        return {"available": False}
    now = time.time()
    try:
        opened = client.get(_prefix(name) + "open_until")
        paused = client.get(_prefix(name) + "pause_until")
        return {
            "available": True,
            "breaker": "open" if opened and float(opened) > now else ("half-open" if opened else "closed"),
            "problem": client.get(_prefix(name) + "problem"),
            "failures": int(client.get(_prefix(name) + "failures") or 0),
            "paused_for": max(0.0, float(paused) - now) if paused else 0.0,
        }
    except Exception:  # noqa: BLE001
        return {"available": False}


def reset(settings: Settings | None = None, name: str = DEFAULT) -> None:
    """Forget every protection state (operators after an incident; tests)."""
    settings = settings or get_settings()
    client = _redis(settings)
    if client is not None:
        client.delete(*(_prefix(name) + key for key in ("failures", "open_until", "trial", "pause_until", "bucket",
                                                        "problem")))


# ------------------------------------------------------------------------------------------ as a transport


@dataclass(frozen=True)
class Breaker:
    """``inner`` (the transport of provider ``name``) behind that provider's circuit breaker and rate limit.

    Answers without calling ``inner`` while the breaker is open (:class:`NotSent` ``declined``, with the
    operator ``problem`` when a refused key opened it) or while a rate-limit pause runs (:class:`NotSent`,
    retryable after the pause). Otherwise sends, then records what the answer says about the service:
    accepted or refused for good (it is up), unknown or retryable (a failure; a 429 pauses every worker
    instead), held (a refused key: the breaker opens at once, so one trial per cool-down meets it).
    """

    inner: Transport
    name: str
    settings: Settings

    def send(self, email: OutgoingEmail, departing: Callable[[], None] | None = None) -> Outcome:
        gate = before_api_send(self.settings, self.name)
        if gate.verdict == "open":
            detail = gate.problem or "failures"
            return NotSent(retryable=True, reason=f"{self.name} circuit breaker open for {gate.wait:.0f}s: {detail}",
                           retry_after=gate.wait, declined=True, problem=gate.problem)
        if gate.verdict == "paused":
            return NotSent(retryable=True, reason=f"{self.name} rate limit: waiting {gate.wait:.1f}s",
                           retry_after=gate.wait)
        outcome = self.inner.send(email, departing)
        if isinstance(outcome, Held):
            open_for_problem(outcome.problem, self.settings, self.name)
        elif isinstance(outcome, NotSent) and outcome.unbuildable:
            pass  # the request was never built: it says nothing about the service
        elif isinstance(outcome, Accepted) or (isinstance(outcome, NotSent) and not outcome.retryable):
            record_success(self.settings, gate, self.name)  # the service answered: it is up
        elif isinstance(outcome, NotSent) and outcome.rate_limited:
            pause_for_rate_limit(outcome.retry_after or 1.0, self.settings, self.name)
        else:
            record_failure(self.settings, gate, self.name)
        return outcome
