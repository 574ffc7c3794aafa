"""Starting a request's SERVER span: the SDK's ``Tracer.start_span``, or, for a provider
`setup_tracing` built, the same span context made without the SDK's general machinery
when the request is not sampled.

Most requests of a service sampled at a few per cent are dropped, and for them the SDK's
``start_span`` is most of what tracing costs: it consults the tracer configuration and
the SDK's own metrics, builds its trace flags several times over, and is called through
a general signature. An unsampled span only needs a valid span context (propagated
downstream, written into log lines), which this module builds from the same public
pieces the SDK uses: the provider's sampler, asked once, and its id generator.

The shortcut is taken only where it provably gives what the SDK would give:

* the provider was built by `setup_tracing`, whose id generator is a `TraceIdHandover`
  holding the sampler built with it, and that sampler is one of the six built-in ones
  (`asgi_observe.tracing.setup.build_sampler`): deterministic for given inputs, so asking
  it again inside the SDK gives the same answer. An entry-point sampler, whose decision
  may be random, keeps the SDK's path;
* the tracer still uses that sampler and that generator (checked at every request, since
  both are public, assignable attributes);
* the SDK's own span metrics (``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``) are off for
  the tracer: they count dropped spans too, and only ``start_span`` reports to them;
* the installed SDK, probed once per process, builds exactly the context computed here
  (trace flags, including W3C Level 2's random-trace-id bit, trace state), for a root
  span and for remote parents with and without that bit.

When the sampler says "record", the trace id already drawn is handed to the id generator
and the SDK's ``start_span`` records the span with it: the decision is taken for one
trace id per request, never for two (which would square the sampling ratio).
"""

from __future__ import annotations

import threading

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.sdk.trace import Tracer, TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision, Sampler
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util import types

__all__ = ["SpanStarter", "TraceIdHandover", "TracerMetricsWatch"]

_SERVER = SpanKind.SERVER
_DROP = Decision.DROP
# W3C Trace Context Level 2's random-trace-id flag; spelled out rather than read from
# `TraceFlags`, which older API versions lack (whose SDKs the probe then turns down).
_RANDOM_TRACE_ID = 0x02
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_NOT_SAMPLED_RANDOM = TraceFlags(TraceFlags.DEFAULT | _RANDOM_TRACE_ID)


class TracerMetricsWatch(metrics.MeterProvider):
    """The meter provider `setup_tracing` gives its `TracerProvider`: it forwards every
    request to the global meter provider, as the SDK does when given none, and notes
    whether a tracer asked for one.

    The SDK's tracers ask for a meter only when their own span metrics
    (``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``) are on; those metrics count unsampled
    spans as well, inside ``Tracer.start_span``, so their use rules the shortcut out.
    """

    def __init__(self) -> None:
        self.asked = False

    def get_meter(
        self,
        name: str,
        version: str | None = None,
        schema_url: str | None = None,
        attributes: types.Attributes | None = None,
    ) -> metrics.Meter:
        self.asked = True
        return metrics.get_meter_provider().get_meter(name, version, schema_url, attributes)


class _Pending(threading.local):
    """The trace id handed over on this thread, if any. A class-level default makes a
    thread's first read a plain lookup rather than a caught AttributeError."""

    trace_id: int | None = None


class TraceIdHandover(RandomIdGenerator):
    """The id generator of providers `setup_tracing` builds: random ids, as the SDK's
    default generator, except that `SpanStarter` may hand over the trace id it drew (and
    had sampled) for the span the SDK is about to start on the same thread.

    The hand-over is per thread and taken by the next ``generate_trace_id`` call, which
    the SDK makes synchronously inside ``start_span``; `SpanStarter` withdraws it right
    after, so no other span ever receives it.

    Args:
        sampler: the sampler the provider was built with, when it is one whose decision
            depends on its inputs alone (the six of the specification); None otherwise,
            which keeps every span on the SDK's path.
    """

    def __init__(self, sampler: Sampler | None) -> None:
        self.sampler = sampler
        self.metrics_watch = TracerMetricsWatch()
        self._pending = _Pending()

    def generate_trace_id(self) -> int:
        pending = self._pending
        trace_id = pending.trace_id
        if trace_id is not None:
            pending.trace_id = None
            return trace_id
        return self.draw_trace_id()

    # A new random trace id, never the one handed over: the SDK's own draw, called
    # without the cost of super().
    draw_trace_id = RandomIdGenerator.generate_trace_id

    def hand_over(self, trace_id: int | None) -> None:
        """Make `trace_id` the next trace id drawn on this thread (None withdraws it)."""
        self._pending.trace_id = trace_id


def _parent_context(trace_flags: int, trace_state: TraceState) -> otel_context.Context:
    parent = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(trace_flags),
        trace_state=trace_state,
    )
    return trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())


def _sdk_agrees() -> bool:
    """Whether the installed SDK's unsampled spans carry exactly the contexts the
    shortcut builds: a root span, and remote parents with and without the random bit."""
    generator = TraceIdHandover(ALWAYS_OFF)
    tracer = TracerProvider(
        sampler=ALWAYS_OFF, id_generator=generator, shutdown_on_exit=False
    ).get_tracer(__name__)
    if not isinstance(tracer, Tracer):  # OTEL_SDK_DISABLED: the SDK makes no spans
        return False
    starter = SpanStarter(tracer, checked=True)
    state = TraceState([("vendor", "value")])
    parents = [
        otel_context.Context(),  # a root span, whatever context is current
        _parent_context(TraceFlags.DEFAULT, state),
        _parent_context(_RANDOM_TRACE_ID, state),
    ]
    for root, parent in zip((True, False, False), parents, strict=True):
        theirs = tracer.start_span("probe", parent, _SERVER).get_span_context()
        ours = starter.start("probe", parent).get_span_context()
        if (
            type(ours) is not type(theirs)
            or (not root and ours.trace_id != theirs.trace_id)  # a root's is random
            or not (ours.is_valid and theirs.is_valid)
            or ours.is_remote != theirs.is_remote
            or ours.trace_flags != theirs.trace_flags
            or ours.trace_state != theirs.trace_state
        ):
            return False
    return True


_agreement: list[bool] = []
_agreement_lock = threading.Lock()


def _sdk_agrees_once() -> bool:
    with _agreement_lock:
        if not _agreement:
            try:
                agrees = _sdk_agrees()
            except Exception:  # an SDK that cannot even be probed keeps its own path
                agrees = False
            _agreement.append(agrees)
        return _agreement[0]


class SpanStarter:
    """Starts the SERVER spans of one tracer: `start` gives what the tracer's
    ``start_span(name, parent, SpanKind.SERVER)`` gives, more cheaply when the request
    is not sampled and the conditions of the module's docstring hold.

    Args:
        tracer: the tracer whose spans are started.
        checked: skip the once-per-process probe of the SDK (the probe itself uses it).
    """

    def __init__(self, tracer: trace.Tracer, *, checked: bool = False) -> None:
        self.tracer = tracer
        self._sdk_tracer: Tracer | None = None
        self._generator: TraceIdHandover | None = None
        # (a context, the trace id of its valid span or None, that span's random-trace-id
        # bit): what `start` read from the last context it was given. Contexts are
        # immutable, and most requests start from the same one (the empty context, as
        # no parent came), so its span is looked up once, not per request.
        self._parent: tuple[otel_context.Context | None, int | None, int] = (None, None, 0)
        if not isinstance(tracer, Tracer):
            return
        generator = tracer.id_generator
        if (
            isinstance(generator, TraceIdHandover)
            and generator.sampler is not None
            # The tracer exists, so it has asked for a meter if its metrics are on.
            and not generator.metrics_watch.asked
            and (checked or _sdk_agrees_once())
        ):
            self._sdk_tracer = tracer
            self._generator = generator

    @property
    def fast(self) -> bool:
        """Whether unsampled spans of this tracer may skip the SDK's ``start_span``."""
        return self._generator is not None

    def start(
        self,
        name: str,
        parent: otel_context.Context | None,
        *,
        current: otel_context.Context | None = None,
    ) -> trace.Span:
        """The SERVER span `name`, child of `parent` (None: of the current context).

        `current` is, when the caller already has it, the context `parent` stands for
        (`parent` itself, or the current context when `parent` is None); the shortcut
        then reads it instead of looking the current context up again. The SDK's path
        is always given `parent` as it came.
        """
        tracer = self._sdk_tracer
        generator = self._generator
        if (
            tracer is None
            or generator is None
            or tracer.id_generator is not generator
            or tracer.sampler is not generator.sampler
            or generator.sampler is None
        ):
            return self.tracer.start_span(name, parent, _SERVER)
        # For the built-in samplers (all that get here) a context and None standing
        # for it are one and the same: they read nothing but its span.
        context = parent if current is None else current
        known, parent_trace_id, random = self._parent
        if context is None or known is not context:
            found: object = trace.get_current_span(context).get_span_context()
            if not isinstance(found, SpanContext):  # a span of a foreign kind: the SDK decides
                return tracer.start_span(name, parent, _SERVER)
            # As the SDK's Tracer.start_span: a valid parent gives its trace id and its
            # random-trace-id bit; otherwise a new, random, trace id.
            if found.is_valid:
                parent_trace_id = found.trace_id
                random = found.trace_flags & _RANDOM_TRACE_ID
            else:
                parent_trace_id = None
                random = _RANDOM_TRACE_ID
            if context is not None:  # None stands for whatever context is current
                self._parent = (context, parent_trace_id, random)
        if parent_trace_id is None:
            trace_id = generator.draw_trace_id()
            drawn = True
        else:
            trace_id = parent_trace_id
            drawn = False
        result = generator.sampler.should_sample(context, trace_id, name, _SERVER, None, ())
        if result.decision is not _DROP:  # recorded: the SDK's own path
            # The SDK records it, with the same trace id; it asks the sampler again,
            # with the same inputs, and a built-in sampler answers the same.
            if not drawn:
                return tracer.start_span(name, parent, _SERVER)
            generator.hand_over(trace_id)
            try:
                return tracer.start_span(name, parent, _SERVER)
            finally:
                generator.hand_over(None)
        return NonRecordingSpan(
            SpanContext(  # positional: keywords cost a third of its time
                trace_id,
                generator.generate_span_id(),
                False,  # is_remote
                _NOT_SAMPLED_RANDOM if random else _NOT_SAMPLED,
                result.trace_state,
            )
        )
