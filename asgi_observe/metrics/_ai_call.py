"""`AICall`: one measured external/AI call, as a context manager or a decorator.

`AppMetrics.track_ai` hands these out; the call reports its duration, tokens and outcome
back to the recorder (an `AppMetrics`) that made it, so this module needs nothing\nfrom `asgi_observe.metrics.app`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from time import perf_counter
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

__all__ = ["AICall", "AICallRecorder"]

P = ParamSpec("P")
R = TypeVar("R")


class AICallRecorder(Protocol):
    """Where a finished call is reported (`asgi_observe.metrics.AppMetrics` is one)."""

    def record_ai_call(
        self, request_type: str, duration: float, tokens: int, *, failed: bool
    ) -> None:
        """Count one call of `request_type`, its duration, its tokens and its outcome."""


class AICall:
    """One external/AI call being measured; also a decorator for sync and async functions.

    Use it as ``with``/``async with`` (the body is timed; call `tokens` to add usage), or
    decorate a function: each call is then measured, and `tokens_from`, if given, reads
    the token count from the function's result. On exit the call is counted, its duration
    observed and its tokens added; an exception also counts a failure and propagates.
    """

    def __init__(
        self,
        metrics: AICallRecorder,
        request_type: str,
        tokens_from: Callable[[Any], int | None] | None = None,
    ) -> None:
        self._metrics = metrics
        self.request_type = request_type
        self._tokens_from = tokens_from
        self._start = 0.0
        self._tokens = 0

    def tokens(self, count: int) -> None:
        """Add `count` tokens used by this call (prompt and completion, as you count them)."""
        if count < 0:
            msg = f"token count must not be negative, got {count}"
            raise ValueError(msg)
        self._tokens += count

    def __enter__(self) -> AICall:
        self._start = perf_counter()
        self._tokens = 0
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._metrics.record_ai_call(
            self.request_type, perf_counter() - self._start, self._tokens, failed=exc is not None
        )

    async def __aenter__(self) -> AICall:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        metrics, request_type, tokens_from = self._metrics, self.request_type, self._tokens_from

        def count_tokens(call: AICall, result: Any) -> None:
            if tokens_from is not None:
                count = tokens_from(result)
                if count:
                    call.tokens(int(count))

        if inspect.iscoroutinefunction(fn):
            coroutine_fn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def measured_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                with AICall(metrics, request_type) as call:
                    result = await coroutine_fn(*args, **kwargs)
                    count_tokens(call, result)
                    return result

            return measured_async

        @functools.wraps(fn)
        def measured(*args: P.args, **kwargs: P.kwargs) -> Any:
            with AICall(metrics, request_type) as call:
                result = fn(*args, **kwargs)
                count_tokens(call, result)
                return result

        return measured
