"""A registry of connection pools shared by the threads of one process, safe across fork.

Both stores keep one pool per database for the whole process (`triage.store.sqlite_pool`,
`triage.store.postgres.backend`). A forked child (the decide workers) must neither use nor close
its parent's connections: after a fork the child forgets every inherited pool but keeps it
referenced forever, so that no finaliser in the child ever closes the parent's sockets or files,
and takes a new lock, since another thread may have held the old one at the moment of the fork.
"""

from __future__ import annotations

import os
import threading
from collections.abc import MutableMapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class PerProcess(Generic[K, V]):
    """Pools by key, with the lock that guards them; emptied (not closed) in a forked child."""

    def __init__(self, items: MutableMapping[K, V]) -> None:
        self.items = items
        # A forked child's inherited pools, referenced forever (see the module).
        self.orphans: list[V] = []
        self._lock = threading.Lock()
        self._hooked = False

    @property
    def lock(self) -> threading.Lock:
        """The lock around `items`; the first use registers the fork hook."""
        if not self._hooked:
            os.register_at_fork(after_in_child=self._forget_in_child)
            self._hooked = True
        return self._lock

    def remove(self, value: V) -> None:
        """Forget `value` under whatever key it is registered; hold `lock` when calling."""
        for key, held in list(self.items.items()):
            if held is value:
                del self.items[key]

    def _forget_in_child(self) -> None:
        self.orphans.extend(self.items.values())
        self.items.clear()
        self._lock = threading.Lock()
