"""Parsing and classifying in worker processes, so that both cores work during a backlog.

With `ingest.workers = N` (N ≥ 1) the CPU-bound, pure part of the pipeline — parse, the etiquette
rules that need no store, classify — runs in N worker processes. The main process keeps everything
that has effects or reads the store: IMAP, the ledger, the rules that read the reply history
(`already-replied`, `hourly-cap`), dispose, recording and replies. `FolderSync` submits a batch
and fetches the next one while a worker decides it. With `workers = 0` (the default) nothing here
is used and the pipeline runs in the account thread as before.

The result is the same `Decided` the in-process `pipeline.decide` builds: the worker reports which
rules consulted the reply history (found by running them against a probe history), and the main
process runs exactly those against the real outbox and puts every reason back in rule order.

Workers are forked once at start-up, before the account threads exist, from the process that has
already imported everything and loaded the model: they share those pages copy-on-write and start
in milliseconds. Each keeps its own copy of the `ModelHandle`, which reloads the model when its
file changes, as the main process's does. A worker that dies breaks the pool: the batches in hand
fail, the next submit starts a fresh pool, and `FolderSync` decides their messages again one at a
time in it, so that a message that kills its worker is found and counted (each attempt is recorded
before the message is decided) without taking the main process with it. Workers exit by
themselves when the main process is gone (SIGKILL included).
"""

from __future__ import annotations

import copyreg
import dataclasses
import gc
import logging
import multiprocessing
import operator
import os
import signal
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import timedelta
from types import MappingProxyType
from typing import Any

from triage.core.models import (
    Address,
    Attachment,
    Classification,
    Contact,
    InboundMessage,
    Verdict,
)
from triage.decide import guards
from triage.decide.classify import ModelHandle
from triage.pipeline import (
    Decided,
    DecideTools,
    Deciding,
    dispose_step,
    parse_step,
    run_decide_steps,
)

log = logging.getLogger(__name__)

Item = tuple[int, bytes, bool]
# What a worker returns per message: the message, the reply destination, the reasons of the rules
# that did not need the history (with their rule index), the indices of those that did, and the
# classification.
Partial = tuple[InboundMessage, guards.Route, tuple[tuple[int, str], ...], tuple[int, ...], Any]
Wait = Callable[[], list[Decided]]

# How often a worker checks that the process that started it is still there.
_ORPHAN_CHECK_S = 1.0


# -- pickling: the results cross a pipe -----------------------------------------------------


def _mapping_proxy(data: dict[str, str]) -> MappingProxyType[str, str]:
    """Rebuild a read-only header map after unpickling."""
    return MappingProxyType(data)


def _reduce_proxy(
    proxy: MappingProxyType[str, str],
) -> tuple[Callable[[dict[str, str]], MappingProxyType[str, str]], tuple[dict[str, str]]]:
    return _mapping_proxy, (dict(proxy),)


def _fields_reducer(cls: type[Any]) -> Callable[[Any], tuple[type[Any], tuple[Any, ...]]]:
    """A reducer handing a frozen dataclass's fields over as one tuple, rebuilt by `cls(*…)`."""
    names = [f.name for f in dataclasses.fields(cls)]
    getter = operator.attrgetter(*names)
    if len(names) == 1:
        return lambda obj: (cls, (getter(obj),))
    return lambda obj: (cls, getter(obj))


def register_pickling() -> None:
    """Make the pipeline's values picklable, and cheaply so; called when a pool starts (before
    the fork, so the workers inherit it), never at import time. Registering twice is harmless.

    `InboundMessage.headers` is a mappingproxy, which pickle refuses. The frozen slotted
    dataclasses pickle through generic Python `__getstate__` code; a reducer that hands over their
    fields as one tuple halves the cost of sending a batch back (measured: ~0.09 → ~0.04 ms per
    message each way).
    """
    copyreg.pickle(MappingProxyType, _reduce_proxy)
    for cls in (InboundMessage, Address, Attachment, Contact, Classification, guards.Route):
        copyreg.pickle(cls, _fields_reducer(cls))


# -- the worker side ------------------------------------------------------------------------


class _ProbeHistory:
    """A reply history that remembers being asked: marks the rules the main process must run."""

    def __init__(self) -> None:
        self.asked = False

    def replied_recently(self, address: str, window: timedelta, *, verified: bool = False) -> bool:
        """Never replied (the main process asks the real outbox)."""
        self.asked = True
        return False


class _Worker:
    """One worker process's state: its model handle and the etiquette context with a probe."""

    def __init__(self, model: ModelHandle, ctx: guards.GuardContext) -> None:
        self.model = model
        self.probe = _ProbeHistory()
        self.ctx = dataclasses.replace(ctx, history=self.probe)

    def check(
        self, msg: InboundMessage, known: Mapping[int, str | None] | None = None
    ) -> tuple[guards.Route, tuple[tuple[int, str], ...], tuple[int, ...]]:
        """`guards.check`, except that rules consulting the history are only named. `known`
        holds answers already asked of this message's headers (`Deciding.known_answers`)."""
        where = guards.route(msg, self.ctx)
        ctx = self.ctx.for_route(where)
        found: list[tuple[int, str]] = []
        deferred: list[int] = []
        for index, rule in enumerate(guards.RULES):
            if known is not None and index in known:
                reason = known[index]  # a header rule: it reads neither context nor history
            else:
                self.probe.asked = False
                reason = rule(msg, ctx, where.address)
                if self.probe.asked:
                    deferred.append(index)
                    continue
            if reason is not None:
                found.append((index, reason))
        return where, tuple(found), tuple(deferred)

    def decide(self, raws: Sequence[bytes]) -> list[Partial]:
        """Run the pipeline's worker steps (parse, classify) and the guards that need no reply
        history over a batch."""
        batch = [Deciding(0, raw, False) for raw in raws]
        parse_step(batch, DecideTools(_no_check, _no_classify, None))
        parsed = [m for m in batch if m.msg is not None]
        messages = [m.msg for m in parsed if m.msg is not None]
        checks = [self.check(m.msg, m.known_answers()) for m in parsed if m.msg is not None]
        # The classifier's header rules are the etiquette check's machine rules, which read
        # neither the context nor the history: the first one the check found is its reason.
        automated = [
            next((reason for index, reason in found if guards.RULES[index].machine), None)
            for _, found, _ in checks
        ]
        classified = self.model.get().classify_many(messages, automated=automated)
        return [
            (msg, dest, found, deferred, cls)
            for msg, (dest, found, deferred), cls in zip(messages, checks, classified, strict=True)
        ]


def _no_classify(_messages: Sequence[InboundMessage]) -> list[Classification]:
    """Never called: the worker classified the batch."""
    raise AssertionError("the classify step ran in the worker")


def _no_check(_msg: InboundMessage) -> Verdict:
    """Never called: a worker runs the guards itself (`_Worker.check`), not `guards_step`."""
    raise AssertionError("the guards step runs in the main process")


_state: _Worker | None = None


def _initialise(model: ModelHandle, ctx: guards.GuardContext, parent: int) -> None:
    """Runs once in each worker process (forked: `model` is the parent's, already loaded)."""
    global _state  # noqa: PLW0603 - one state per worker process is the point
    _state = _Worker(model, ctx)
    # Stopping is the main process's business: systemd's SIGTERM to the whole unit, or Ctrl-C to
    # the terminal's process group, must not kill a worker in the middle of the batch that the
    # main process is waiting for. The main process shuts the pool down when it stops.
    for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, signal.SIG_IGN)

    def watch() -> None:
        # Pool workers block reading their task pipe, whose write end they inherited, so they
        # would outlive a main process killed with SIGKILL: notice being re-parented instead.
        while os.getppid() == parent:
            time.sleep(_ORPHAN_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _decide(raws: Sequence[bytes]) -> list[Partial]:
    """The task a worker runs for one batch."""
    assert _state is not None, "worker not initialised"
    return _state.decide(raws)


def _ready() -> str:
    """A task that proves a worker is up; returns its model's version."""
    assert _state is not None, "worker not initialised"
    return _state.model.get().version


# -- the main-process side ------------------------------------------------------------------


class _BatchHistory:
    """The reply history as it stands while one batch is decided: each question asked once.

    Nothing is recorded between the rules of one batch (recording comes after deciding, in the
    same thread), so the answers cannot change within it; the in-process path asks the store the
    same questions at the same point. A history that answers for many addresses at once (the
    outbox) is asked once for every destination of the batch, at the first question about one:
    one query per batch in a backlog instead of one per message.
    """

    def __init__(self, history: guards.ReplyHistory, addresses: Collection[str] = ()) -> None:
        self.history = history
        self.addresses = frozenset(addresses)
        self._bulk = isinstance(history, guards.BatchReplyHistory)
        self._recent: dict[tuple[str, timedelta, bool], bool] = {}
        self._found: dict[timedelta, dict[str, bool]] = {}

    def replied_recently(self, address: str, window: timedelta, *, verified: bool = False) -> bool:
        """Asked of the real history once per address, window and kind of sender."""
        key = (address, window, verified)
        if key not in self._recent:
            self._recent[key] = self._ask(address, window, verified)
        return self._recent[key]

    def _ask(self, address: str, window: timedelta, verified: bool) -> bool:
        if self._bulk and address in self.addresses:
            found = self._found.get(window)
            if found is None:
                assert isinstance(self.history, guards.BatchReplyHistory)
                found = self._found[window] = self.history.recent_recipients(self.addresses, window)
            # Not verified: any counted reply; verified: one that counts for a verified sender.
            return address in found and (found[address] or not verified)
        return self.history.replied_recently(address, window, verified=verified)


def finish(
    items: Sequence[Item],
    partials: Sequence[Partial],
    ctx: guards.GuardContext,
    folder_prefix: str | None,
) -> list[Decided]:
    """Complete the workers' results in the main process: history rules, verdict, disposition."""
    if ctx.history is not None:
        # The addresses the history rules may ask about: where each message's reply would go.
        destinations = {
            ctx.canonical(where.address.email)
            for _msg, where, _found, deferred, _cls in partials
            if deferred and where.address is not None
        }
        ctx = dataclasses.replace(ctx, history=_BatchHistory(ctx.history, destinations))
    batch: list[Deciding] = []
    for (row, raw, backfill), (msg, where, found, deferred, cls) in zip(
        items, partials, strict=True
    ):
        reasons = dict(found)
        if deferred:
            routed = ctx.for_route(where)
            for index in deferred:
                reason = guards.RULES[index](msg, routed, where.address)
                if reason is not None:
                    reasons[index] = reason
        verdict = guards.verdict_of(where, (reasons[i] for i in sorted(reasons)))
        batch.append(Deciding(row, raw, backfill, msg, verdict, cls))
    # The steps after the worker's: the guards are done above, disposing is left.
    tools = DecideTools(_no_check, _no_classify, folder_prefix)
    run_decide_steps(batch, tools, (dispose_step,))
    return [m.decided() for m in batch]


class DecidePool:
    """Worker processes deciding batches; `start(items)` returns a function that waits for them."""

    def __init__(self, workers: int, model: ModelHandle, ctx: guards.GuardContext) -> None:
        """Fork the workers now (call before starting threads) and wait until they answer."""
        register_pickling()
        self.workers = workers
        self.model = model
        self.ctx = dataclasses.replace(ctx, history=None)
        self._lock = threading.RLock()
        self._executor = self._spawn()

    def _spawn(self) -> ProcessPoolExecutor:
        # fork: the workers inherit the loaded model and every imported module, shared
        # copy-on-write, instead of importing scikit-learn again (~2 s and ~120 MiB each).
        # Frozen objects are left alone by the garbage collector, which would otherwise write
        # to every one of them in each process and so copy the shared pages one by one.
        gc.freeze()
        executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_initialise,
            initargs=(self.model, self.ctx, os.getpid()),
        )
        # The first submit forks every worker; wait for each so a broken set-up fails at start.
        for future in [executor.submit(_ready) for _ in range(self.workers)]:
            future.result()
        return executor

    def start(
        self, items: Sequence[Item], ctx: guards.GuardContext, folder_prefix: str | None
    ) -> Wait:
        """Submit a batch; the returned function blocks until it is decided.

        `ctx` is the caller's context with its real reply history, used when finishing in the
        caller's thread (the store connection belongs to that thread), so the history rules see
        every batch recorded before this one, as in process. (`FolderSync` keeps the function of
        each batch it starts early until that batch's turn.)
        """
        future = self._submit([raw for _row, raw, _bf in items])

        def wait() -> list[Decided]:
            return finish(items, future.result(), ctx, folder_prefix)

        return wait

    def _submit(self, raws: list[bytes]) -> Future[list[Partial]]:
        with self._lock:
            try:
                return self._executor.submit(_decide, raws)
            except BrokenProcessPool:
                log.warning("a worker process died; starting new workers")
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._spawn()
                return self._executor.submit(_decide, raws)

    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and the benchmark)."""
        processes: dict[int, Any] = getattr(self._executor, "_processes", None) or {}
        return list(processes)

    def close(self) -> None:
        """Stop the workers (waits for the batch in hand)."""
        with self._lock:
            self._executor.shutdown(wait=True, cancel_futures=True)
