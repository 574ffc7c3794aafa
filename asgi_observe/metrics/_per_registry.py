"""Objects made once per Prometheus registry: the answer to "Duplicated timeseries".

Starlette rebuilds its middleware stack, app factories run twice, tests build many apps:
whatever registers collectors must reuse what a registry already holds. Asking again
with another configuration is refused with a clear error rather than silently served
with the first one. Entries go away with their registry.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry

__all__ = ["PerRegistry"]

T = TypeVar("T")


class PerRegistry(Generic[T]):
    """Get-or-create of one object per (registry, key), remembering how it was made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: weakref.WeakKeyDictionary[CollectorRegistry, dict[Hashable, tuple[Hashable, T]]]
        self._made = weakref.WeakKeyDictionary()

    def get_or_create(
        self,
        registry: CollectorRegistry,
        key: Hashable,
        config: Hashable,
        create: Callable[[], T],
        conflict: Callable[[Hashable], str],
    ) -> T:
        """The object for `key`, made by `create` on first use.

        Raises `ValueError` with ``conflict(existing_config)`` when the object exists
        with a configuration other than `config`.
        """
        with self._lock:
            known = self._made.setdefault(registry, {})
            found = known.get(key)
            if found is not None:
                if found[0] != config:
                    raise ValueError(conflict(found[0]))
                return found[1]
            made = create()
            known[key] = (config, made)
            return made

    def all(self, registry: CollectorRegistry) -> list[T]:
        """Everything made for `registry`."""
        with self._lock:
            return [made for _, made in self._made.get(registry, {}).values()]
