"""What a health check is, and how one is run so that it can never hang or break a probe.

A `Check` is a name, a timeout, a criticality and an async function. `run_check` runs it
as its own task and stops waiting at the timeout whatever the function does (a driver
that swallows cancellation cannot stretch a probe), turns any exception into a ``fail``
result with a sanitised message, and measures how long it took. Blocking functions go to
`in_thread`, which runs them on a dedicated daemon thread: not on the event loop, not on
the default executor a busy app may have starved, and at most one thread per check even
when the dependency hangs for good.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from asgi_observe.pii import REDACTED, is_sensitive_key, redact

__all__ = [
    "Check",
    "CheckFunction",
    "CheckResult",
    "Status",
    "in_thread",
    "iso_utc",
    "run_check",
    "sanitize_message",
]

logger = logging.getLogger("asgi_observe")

Status = Literal["pass", "warn", "fail"]

_RESERVED = frozenset({"status", "response_ms", "message"})
_MAX_MESSAGE = 300  # a probe answer must stay small whatever a driver puts in its errors
_MAX_EXTRA = 20


class CheckFunction(Protocol):
    """The work of a check: an async function of no arguments.

    It may return ``None`` or ``True`` (pass), ``False`` (fail), or a mapping whose
    optional ``status`` (``pass``/``warn``/``fail``) and ``message`` keys set the result
    and whose other keys are reported alongside it (``usage_percent``). Raising is a fail.
    """

    def __call__(self) -> Awaitable[object]: ...


@dataclass(frozen=True)
class Check:
    """One named dependency check.

    Args:
        name: the key in the ``checks`` map of the readiness answer and the ``check``
            label of the health metrics; chosen by the developer, so the label is bounded.
        run: the async function doing the work (see `CheckFunction`). Blocking work must
            go through `in_thread` (the built-in checks and `checks.callable` do that).
        timeout: seconds after which the check is reported ``fail``; must be positive.
        critical: a failing critical check makes readiness fail (503); a failing
            non-critical one is reported ``warn`` and readiness stays 200.
        component_type: ``componentType`` in the ``application/health+json`` format
            (``datastore``, ``component``, ``system``).
        measurement: the measurement name of the health+json key (``database:responseTime``).
        observed_key: the result key whose value is the health+json ``observedValue``.
        observed_unit: the health+json ``observedUnit`` of that value.
        close: releases what the check keeps between runs (a pooled HTTP client);
            awaited by `HealthApp.aclose` and when the health app's lifespan shuts down.
    """

    name: str
    run: CheckFunction
    timeout: float = 2.0
    critical: bool = True
    component_type: str = "component"
    measurement: str = "responseTime"
    observed_key: str = "response_ms"
    observed_unit: str = "ms"
    close: Callable[[], Awaitable[None]] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            msg = f"a check needs a non-empty name, got {self.name!r}"
            raise ValueError(msg)
        run: object = self.run  # typed, but built by users at runtime
        if not callable(run):
            msg = f"check {self.name!r}: run must be an async function, got {self.run!r}"
            raise TypeError(msg)
        if isinstance(self.timeout, bool) or not (
            isinstance(self.timeout, (int, float))
            and math.isfinite(self.timeout)
            and self.timeout > 0
        ):
            msg = f"check {self.name!r}: timeout must be a positive number, got {self.timeout!r}"
            raise ValueError(msg)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one run of a check, as reported (``warn`` already applied)."""

    name: str
    status: Status
    response_ms: int
    time: str
    message: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    duration_seconds: float = 0.0  # unrounded, for the duration metric

    def as_json(self) -> dict[str, Any]:
        """The seed's shape: ``{status, response_ms, message?, ...extra}``."""
        body: dict[str, Any] = {"status": self.status, "response_ms": self.response_ms}
        if self.message is not None:
            body["message"] = self.message
        body.update(self.extra)
        return body


# --- messages ---------------------------------------------------------------------------

# ``scheme://user:secret@host`` in a DSN or URL (the user may be empty, as in Redis URLs).
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^\s:/@]*:[^\s/@]*@")
# libpq keyword DSNs and driver messages: ``password=secret``, ``password: 'secret'``.
_KEYWORD_SECRET = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token)\b\s*[=:]\s*)(?:'[^']*'|\"[^\"]*\"|\S+)",
    re.IGNORECASE,
)


def sanitize_message(text: str) -> str:
    """Remove credentials and PII from a failure message and bound its length.

    DSN credentials are removed first (``postgresql://[REDACTED]@db``), then the shared PII
    redaction runs, so the probe answer can be served to anyone who can reach it.
    """
    text = _URL_CREDENTIALS.sub(rf"\g<scheme>{REDACTED}@", text)
    text = _KEYWORD_SECRET.sub(rf"\g<key>{REDACTED}", text)
    try:
        redacted = redact(text)
    except Exception:
        logger.warning("asgi_observe: PII redaction failed on a check message", exc_info=True)
        redacted = text
    text = redacted if isinstance(redacted, str) else str(redacted)
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return text


def _describe(exc: BaseException) -> str:
    detail = str(exc).strip()
    name = type(exc).__name__
    return sanitize_message(f"{name}: {detail}" if detail else name)


# --- time -------------------------------------------------------------------------------

_iso_cache: tuple[int, str] = (-1, "")


def iso_utc(now: float | None = None) -> str:
    """The current time as ISO-8601 UTC ending in ``Z``, at second precision (the seed's)."""
    global _iso_cache  # noqa: PLW0603 - a one-entry cache keeps liveness cheap
    second = int(time.time() if now is None else now)
    cached = _iso_cache
    if cached[0] == second:
        return cached[1]
    text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
    _iso_cache = (second, text)
    return text


# --- threads ----------------------------------------------------------------------------


class _ThreadedCall:
    """Run a blocking function on a daemon thread, at most one call in flight.

    A dependency that hangs forever would otherwise add a stuck thread on every probe.
    While a call is still running, later runs wait for that same call; the check's
    timeout still applies to each of them. Daemon threads never delay interpreter exit,
    which a stuck worker of a `ThreadPoolExecutor` would.
    """

    def __init__(self, fn: Callable[[], object], name: str) -> None:
        self._fn = fn
        self._name = name
        self._lock = threading.Lock()
        self._running: concurrent.futures.Future[object] | None = None

    def _work(self, future: concurrent.futures.Future[object]) -> None:
        try:
            result = self._fn()
        except BaseException as exc:  # handed to the awaiting loop, which reports it
            future.set_exception(exc)
        else:
            future.set_result(result)

    async def __call__(self) -> object:
        with self._lock:
            future = self._running
            if future is None or future.done():
                future = concurrent.futures.Future()
                # Marked running before the thread starts, so a waiter's cancellation can
                # never cancel it under the thread's feet.
                future.set_running_or_notify_cancel()
                self._running = future
                thread = threading.Thread(
                    target=self._work,
                    args=(future,),
                    name=f"asgi_observe-health-{self._name}",
                    daemon=True,
                )
                thread.start()
        result = await asyncio.wrap_future(future)
        if inspect.isawaitable(result):  # a sync function that returned a coroutine
            return await result
        return result


def in_thread(fn: Callable[[], object], *, name: str) -> CheckFunction:
    """Wrap a blocking function of no arguments as an async `CheckFunction`."""
    return _ThreadedCall(fn, name)


# --- running ----------------------------------------------------------------------------


def _retrieve(task: asyncio.Future[object]) -> None:
    # An abandoned task's late exception is expected; retrieve it so asyncio stays quiet.
    if not task.cancelled():
        task.exception()


_STATUS_ALIASES: Mapping[object, Status] = {
    "pass": "pass",
    "ok": "pass",
    "up": "pass",
    "healthy": "pass",
    "warn": "warn",
    "warning": "warn",
    "degraded": "warn",
    "fail": "fail",
    "down": "fail",
    "error": "fail",
    "unhealthy": "fail",
}


def _json_safe(value: object) -> object:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def _reported(key: str, value: object) -> object:
    """A field a check returned beside ``status`` and ``message``, as the probe shows it.

    Probe answers can be read by anyone who reaches them, so extra fields are redacted
    like messages: a sensitive key (``password``, ``token``, ``dsn_password``) hides
    its value whatever it is; containers are redacted by structure first (sensitive
    keys and ``(name, value)`` pairs inside them), then written as strings as before;
    every string goes through `sanitize_message` (DSN credentials, PII, bounded
    length). Numbers, booleans and None are reported as they are.
    """
    if is_sensitive_key(key):
        return REDACTED
    if not (value is None or isinstance(value, (bool, int, float, str))):
        try:
            value = redact(value)
        except Exception:  # redact never raises; a hostile object's str() below may
            value = f"<unreportable {type(value).__qualname__}>"
    safe = _json_safe(value)
    return sanitize_message(safe) if isinstance(safe, str) else safe


def _interpret(value: object) -> tuple[Status, str | None, dict[str, Any]]:
    """Turn what a check function returned into status, message and extra fields."""
    if value is None or value is True:
        return "pass", None, {}
    if value is False:
        return "fail", "check returned False", {}
    if not isinstance(value, Mapping):
        return "pass", None, {}
    raw_status = value.get("status", "pass")
    status: Status
    if raw_status is True:
        status = "pass"
    elif raw_status is False:
        status = "fail"
    else:
        key = raw_status.lower() if isinstance(raw_status, str) else raw_status
        status = _STATUS_ALIASES.get(key, "fail")
    raw_message = value.get("message")
    message = sanitize_message(str(raw_message)) if raw_message is not None else None
    if status == "fail" and message is None and raw_status not in (False, "fail"):
        message = sanitize_message(f"unknown status {raw_status!r}")
    extra: dict[str, Any] = {}
    for key, item in value.items():
        if len(extra) >= _MAX_EXTRA:
            break
        if isinstance(key, str) and key not in _RESERVED:
            extra[key] = _reported(key, item)
    return status, message, extra


async def run_check(check: Check) -> CheckResult:
    """Run `check` under its timeout; never raises (except when the caller is cancelled)."""
    start = time.perf_counter()
    try:
        status, message, extra = await _outcome(check)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        status, message, extra = "fail", _describe(exc), {}
    elapsed = time.perf_counter() - start
    if status == "fail" and not check.critical:
        status = "warn"
    return CheckResult(
        name=check.name,
        status=status,
        response_ms=round(elapsed * 1000),
        time=iso_utc(),
        message=message,
        extra=extra,
        duration_seconds=elapsed,
    )


async def _outcome(check: Check) -> tuple[Status, str | None, dict[str, Any]]:
    outcome: object = check.run()  # a user's `run` may be a plain function after all
    if not inspect.isawaitable(outcome):
        return _interpret(outcome)
    task: asyncio.Future[object] = asyncio.ensure_future(outcome)
    try:
        done, _ = await asyncio.wait({task}, timeout=check.timeout)
    except asyncio.CancelledError:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise
    if not done:
        # Abandon rather than await the cancellation: a driver may take its time (or
        # refuse) to unwind, and the probe must answer at the timeout.
        task.cancel()
        task.add_done_callback(_retrieve)
        return "fail", f"TimeoutError: no answer within {check.timeout:g}s", {}
    if task.cancelled():  # cancelled from inside the check (a driver's own timeout)
        return "fail", "CancelledError: the check was cancelled", {}
    exc = task.exception()
    if exc is not None:
        return "fail", _describe(exc), {}
    return _interpret(task.result())
