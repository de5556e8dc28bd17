"""Logging: text by default, one JSON object per line on request, secrets never written, and one
consistent line per handled message."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from triage.ops import logs
from triage.ops.logs import REDACTED, log_outcome, redact_secrets, setup_logging

SECRET = "s3cr3t-pa55"
OTHER_SECRET = 'smtp"pw\\x'


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Where setup_logging writes in these tests; the root logger and the registered secrets are
    restored afterwards, so other tests see the logging pytest set up."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_hooks = sys.excepthook, threading.excepthook
    out = io.StringIO()
    try:
        yield out
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        sys.excepthook, threading.excepthook = saved_hooks
        logs.clear_secrets()


def test_text_format_is_one_readable_line(stream: io.StringIO) -> None:
    """The default format: time, level, logger, message."""
    setup_logging(stream=stream)
    logging.getLogger("triage.test").info("connected to %s", "imap.example.test")
    line = stream.getvalue()
    assert line.endswith(" INFO    triage.test: connected to imap.example.test\n")
    assert line.count("\n") == 1


def test_json_format_writes_one_object_per_line_with_extra_fields(stream: io.StringIO) -> None:
    """Each record is one parseable JSON line, even with newlines in the message or a traceback;
    extra fields become keys; levels below the configured one are dropped."""
    setup_logging("json", "INFO", stream=stream)
    log = logging.getLogger("triage.test")
    log.debug("not shown")
    log.info("two\nlines", extra={"account": "default", "uid": 7})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "two\nlines"
    assert (first["level"], first["logger"]) == ("INFO", "triage.test")
    assert (first["account"], first["uid"]) == ("default", 7)
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR"
    assert "ValueError: boom" in second["exc"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_registered_secrets_are_redacted_everywhere(stream: io.StringIO, fmt: str) -> None:
    """A registered password never reaches the output: not in the message, not in %s or %r
    arguments, not in extra fields, not in a traceback; `********` stands in its place."""
    setup_logging(fmt, "DEBUG", stream=stream)
    redact_secrets([SECRET, OTHER_SECRET, ""])
    log = logging.getLogger("triage.test")
    log.info(f"inline {SECRET}")
    log.info("arg %s and repr %r", SECRET, OTHER_SECRET)
    log.info("dict %(pw)s", {"pw": SECRET})
    log.warning("extra", extra={"password": SECRET, "list": [SECRET, 1]})
    try:
        raise RuntimeError(f"login failed with {SECRET}")
    except RuntimeError:
        log.exception("traceback")
    out = stream.getvalue()
    assert SECRET not in out
    assert "smtp" not in out  # neither the raw OTHER_SECRET nor its escaped repr form
    # message, %s, %r, mapping, traceback; JSON also shows the two extra fields.
    assert out.count(REDACTED) == (7 if fmt == "json" else 5)
    if fmt == "json":
        records = [json.loads(line) for line in out.splitlines()]
        assert len(records) == 5
        assert records[3]["password"] == REDACTED
        assert records[3]["list"] == [REDACTED, 1]


def test_records_without_secrets_keep_their_formatting(stream: io.StringIO) -> None:
    """Redaction changes nothing else: numbers keep their format, a literal % survives."""
    setup_logging(stream=stream)
    redact_secrets([SECRET])
    logging.getLogger("triage.test").info("%d%% of %.1f", 50, 2.25)
    assert stream.getvalue().endswith("triage.test: 50% of 2.2\n")


def test_log_outcome_text_line_for_a_reply_and_for_a_skip(stream: io.StringIO) -> None:
    """One line per message: where, which UID and Message-ID, decision, and replied or the
    reasons why not; header text from strangers cannot break the line."""
    setup_logging(stream=stream)
    log = logging.getLogger("triage.ops.daemon")
    log_outcome(log, "default", "INBOX", 42, "<a@x.example>", "sales", True, [])
    log_outcome(
        log,
        "default",
        "INBOX",
        43,
        "<b@x.example>\r\nInjected: line",
        "marketing",
        False,
        ["auto-submitted: auto-replied", "hourly-cap: 60 replies\nthis hour"],
    )
    first, second = stream.getvalue().splitlines()
    assert first.endswith("triage.ops.daemon: default/INBOX uid 42 <a@x.example>: sales, replied")
    assert second.endswith(
        "default/INBOX uid 43 <b@x.example> Injected: line: marketing, not replied "
        "(auto-submitted: auto-replied; hourly-cap: 60 replies this hour)"
    )


def test_log_outcome_json_fields(stream: io.StringIO) -> None:
    """In JSON the outcome's parts are fields a log collector can query."""
    setup_logging("json", stream=stream)
    log_outcome(logging.getLogger("triage.ops.daemon"), "a", "INBOX", 1, "", "review", False, [])
    record = json.loads(stream.getvalue())
    assert record["message"] == "a/INBOX uid 1 (no Message-ID): review, not replied"
    assert {k: record[k] for k in ("account", "folder", "uid", "decision", "replied")} == {
        "account": "a",
        "folder": "INBOX",
        "uid": 1,
        "decision": "review",
        "replied": False,
    }
    assert record["reasons"] == []
    assert record["message_id"] == "(no Message-ID)"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_an_exception_in_a_thread_is_logged_redacted_in_the_log_format(
    stream: io.StringIO, fmt: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """A thread dying of an exception that quotes a password: the record goes through the
    configured handler (JSON when configured) with the password redacted, and nothing reaches
    stderr past it."""
    setup_logging(fmt, "INFO", stream=stream)
    redact_secrets([SECRET])

    def work() -> None:
        raise RuntimeError(f"login failed with {SECRET}")

    thread = threading.Thread(target=work, name="account-default")
    thread.start()
    thread.join()
    out = stream.getvalue()
    assert SECRET not in out
    assert "thread account-default died" in out
    assert f"RuntimeError: login failed with {REDACTED}" in out
    if fmt == "json":
        (record,) = [json.loads(line) for line in out.splitlines()]
        assert record["level"] == "ERROR"
        assert "Traceback" in record["exc"]
    else:
        assert out.splitlines()[0].split(" ", 3)[2] == "ERROR"
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err
    assert SECRET not in captured.err + captured.out


def test_an_uncaught_exception_in_the_main_thread_is_one_json_record() -> None:
    """`sys.excepthook` too: a process dying of an exception writes one JSON line on stderr,
    password redacted, instead of Python's bare traceback."""
    code = (
        "from triage.ops.logs import redact_secrets, setup_logging\n"
        "setup_logging('json', 'INFO')\n"
        f"redact_secrets([{SECRET!r}])\n"
        f"raise RuntimeError('login failed with {SECRET}')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "CRITICAL"
    assert f"RuntimeError: login failed with {REDACTED}" in record["exc"]
    assert SECRET not in result.stderr
