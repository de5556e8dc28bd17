"""The pipeline as data: the act steps run in order, and a retry skips what was already done.

Pure logic with a fake port (the real one, `FolderSync`, is tested against the mail harness in
`tests/test_pipeline_run.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import pytest

from triage.pipeline import (
    ACT_STEPS,
    DECIDE_STEPS,
    Act,
    Decided,
    Recorder,
    act,
    classify_step,
    dispose_step,
    file_step,
    finish_step,
    guards_step,
    mark_step,
    parse_step,
    record_step,
    send_step,
)
from triage.store.ledger import CLASSIFIED, SEEN, LedgerRow


def row(row_id: int, state: str = SEEN) -> LedgerRow:
    """A ledger row in `state`."""
    return LedgerRow(row_id, "default", "INBOX", 1, row_id, "", state, 1, False, None, None)


class FakeRecorder:
    """Records nothing; remembers what it was asked to record."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def record(self, batch: Sequence[Decided]) -> list[Decided]:
        """Every message as decided."""
        self.calls.append(f"record {len(batch)}")
        return list(batch)


class FakePorts:
    """The act steps' port, writing down each call; `mark` fails while `fail_mark` is set."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.recorder = cast(Recorder, FakeRecorder(self.calls))
        self.fail_mark = False
        self.checkpoint: Callable[[str], None] = self.calls.append

    def recorded(self, one: Act) -> None:
        self.calls.append(f"recorded {one.row.id}")

    def send(self) -> None:
        self.calls.append("send")

    def file(self, work: Sequence[Act], alone: bool) -> None:
        self.calls.append(f"file {[w.row.id for w in work]} alone={alone}")

    def mark(self, work: Sequence[Act]) -> None:
        if self.fail_mark:
            raise RuntimeError("cannot mark")
        self.calls.append(f"mark {[w.row.id for w in work]}")

    def finish(self, work: Sequence[Act]) -> None:
        self.calls.append(f"finish {[w.row.id for w in work]}")


DECIDED = cast(Decided, object())


def test_each_half_is_one_ordered_tuple_of_named_steps() -> None:
    """Decide: parse, guards, classify, dispose. Act: record, send, file, mark, finish."""
    assert (parse_step, guards_step, classify_step, dispose_step) == DECIDE_STEPS
    assert (record_step, send_step, file_step, mark_step, finish_step) == ACT_STEPS


def test_act_runs_the_steps_in_order_and_skips_a_row_recorded_earlier() -> None:
    """A decided message is recorded, sent, filed, marked and finished, in that order; a row a
    crash left `classified` is not recorded again, only marked and finished."""
    ports = FakePorts()
    act(ports, [Act(row(1), DECIDED), Act(row(2, CLASSIFIED))])
    assert ports.calls == [
        "record 1",
        "recorded 1",
        "after_record",
        "send",
        "after_send",
        "file [1, 2] alone=False",
        "mark [1, 2]",
        "before_done",
        "finish [1, 2]",
    ]


def test_a_retry_after_a_failed_step_does_not_record_twice() -> None:
    """Marking fails after the batch was recorded: retried alone, the message is marked and
    finished, and never recorded a second time (its reply is never queued twice)."""
    ports = FakePorts()
    work = [Act(row(1), DECIDED)]
    ports.fail_mark = True
    with pytest.raises(RuntimeError):
        act(ports, work)
    assert work[0].recorded and not work[0].finished
    ports.fail_mark = False
    ports.calls.clear()
    act(ports, work, alone=True)
    assert not any(c.startswith("record") for c in ports.calls)
    assert ports.calls[-3:] == ["mark [1]", "before_done", "finish [1]"]
    assert work[0].finished


def test_a_failing_recorded_callback_never_gets_a_message_recorded_twice() -> None:
    """The `recorded` callback (log line, metrics) raises for the first message of a batch: the
    batch is recorded once, every message is marked recorded and the others are still told,
    and the act steps go on; retrying a message alone never records it again."""
    ports = FakePorts()
    told: list[int] = []

    def recorded(one: Act) -> None:
        told.append(one.row.id)
        if one.row.id == 1:
            raise RuntimeError("log line failed")

    ports.recorded = recorded  # type: ignore[method-assign]
    work = [Act(row(1), DECIDED), Act(row(2), DECIDED)]
    act(ports, work)
    assert told == [1, 2]
    assert all(w.recorded and w.finished for w in work)
    assert ports.calls.count("record 2") == 1
    ports.calls.clear()
    act(ports, [work[1]], alone=True)
    assert not any(c.startswith("record") for c in ports.calls)


def test_header_answers_hold_only_for_the_message_they_were_asked_of() -> None:
    """The parse step keeps the header rules' answers for the message it parsed; once the
    message is another one (the parser's stand-in after an error), there are none to reuse."""
    from triage.core.models import InboundMessage
    from triage.decide import guards
    from triage.pipeline import DecideTools, Deciding

    raw = b"From: News <news@lists.example.org>\r\nList-Id: <news.lists.example.org>\r\n\r\nHi\r\n"
    m = Deciding(0, raw, False)
    parse_step([m], cast(DecideTools, None))
    assert m.msg is not None
    answers = m.known_answers()
    assert answers == guards.header_answers(m.msg)
    assert guards.first_header_reason(answers) == "list-header: mailing list header List-Id"
    assert m.msg.text == ""  # decided by its headers: the body was not read
    m.msg = InboundMessage(message_id="<stand-in@triage.invalid>")
    assert m.known_answers() is None
