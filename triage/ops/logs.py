"""Logging set-up: human-readable lines by default, JSON lines for log collectors.

Rules for every caller (reviewers check them; nothing here can enforce them all):

- Never log a message body, a reply body or a raw message at INFO or above. Subjects, addresses,
  Message-IDs, UIDs, decisions and reasons are fine; bodies belong in the store, not the journal.
  At DEBUG, log the length of a body, not the body.
- Never log a password or token. As a safety net, `setup_logging` installs a filter that replaces
  every string registered with `redact_secrets` (the IMAP and SMTP passwords) by `********` in each
  record's message, arguments, extra fields and traceback, should one ever slip through.
- User-caused problems (a bad message, a wrong template) are logged at INFO or WARNING; faults of
  the system (a server down) at ERROR.
- One line per handled message, written with `log_outcome`, so the outcome of every message reads
  the same in text and has the same fields in JSON.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from triage.core.settings import Settings

REDACTED = "********"

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# Message-IDs and reasons quote headers a stranger wrote: bounded, one line.
_MAX_FIELD = 300


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller passed with `extra=`."""
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line with time, level, logger, message and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON (newlines inside values are escaped by JSON)."""
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(_extras(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class SecretRedactor(logging.Filter):
    """Replaces registered secrets by `********` in every record that passes through.

    Installed on the handler (not on a logger) so that records propagated from every logger of
    the process pass through it. The record is rewritten in place: its message is formatted with
    its arguments and redacted, so no argument can carry a secret to any later handler.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def add(self, secrets: Iterable[str]) -> None:
        """Register secrets; empty strings are ignored. Also redacts each one's `repr` escaping,
        since `%r` of a string holding a quote or backslash shows it escaped."""
        found = set()
        for secret in secrets:
            if secret:
                found.add(secret)
                found.add(repr(secret)[1:-1])
        with self._lock:
            # Longest first, so a secret that contains another is replaced whole.
            merged = set(self._secrets) | found
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def clear(self) -> None:
        """Forget every registered secret (tests; a reload that changed passwords)."""
        with self._lock:
            self._secrets = ()

    def redact(self, text: str) -> str:
        """`text` with every registered secret replaced."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def _redact_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, list):
            return [self._redact_value(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self._redact_value(v) for v in value)
        if isinstance(value, dict):
            return {k: self._redact_value(v) for k, v in value.items()}
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact `record` in place; never drops it."""
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):
            # Arguments that do not fit the format: logging will report the record as broken;
            # make sure that report cannot show a secret either.
            record.msg = self.redact(str(record.msg))
            record.args = tuple(self.redact(repr(a)) for a in _as_tuple(record.args))
        else:
            record.msg = self.redact(message)
            record.args = ()
        for key, value in _extras(record).items():
            setattr(record, key, self._redact_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def _as_tuple(args: object) -> tuple[object, ...]:
    if args is None:
        return ()
    if isinstance(args, tuple):
        return args
    return (args,)


# Logging is process-wide state by nature (the root logger); the redactor belongs to it, so it is
# one per process too. It holds no secret until `redact_secrets` is called.
_REDACTOR = SecretRedactor()


def redact_secrets(secrets: Iterable[str]) -> None:
    """Register strings (passwords) to be replaced by `********` in every log record.

    Call it right after loading the settings, with every password in them; it may be called before
    or after `setup_logging` and more than once (secrets accumulate).
    """
    _REDACTOR.add(secrets)


def clear_secrets() -> None:
    """Forget every registered secret (tests; a reload before registering the new passwords)."""
    _REDACTOR.clear()


def redact_settings_secrets(settings: Settings) -> None:
    """`redact_secrets` with every password in `settings` (each IMAP account's and SMTP's) and
    every webhook signing secret."""
    passwords = [account.secret() for account in settings.imap.all_accounts()]
    passwords.append(settings.smtp.secret())
    passwords.extend(secret for hook in settings.webhooks for secret in hook.secrets())
    redact_secrets(passwords)


def setup_logging(fmt: str = "text", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Configure the root logger once for this process: one handler on `stream` (stderr by
    default) in the given format ("text" or "json") and level, with secret redaction."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    handler.addFilter(_REDACTOR)
    # Neither format shows where a record was made, nor its thread or process: skip finding them
    # (the logging HOWTO's "Optimization" settings), a good part of each record's cost, and
    # there is a record per message.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Python prints an uncaught exception's traceback straight to stderr, past the redactor and
    # the JSON format: send it through the handler like any other record.
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_thread_exception


_CRASH_LOG = logging.getLogger("triage.crash")


def _log_uncaught(
    exc_type: type[BaseException],
    exc: BaseException,
    tb: TracebackType | None,
) -> None:
    """`sys.excepthook`: the main thread's uncaught exception as one CRITICAL record."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)  # Ctrl-C: the usual short report
        return
    _CRASH_LOG.critical("uncaught exception, triage stops", exc_info=(exc_type, exc, tb))


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """`threading.excepthook`: a thread that dies of an exception says so, through the logs."""
    if issubclass(args.exc_type, SystemExit):
        return  # a thread that exits on purpose, as the default hook treats it
    name = args.thread.name if args.thread is not None else "unknown"
    if args.exc_value is None:
        _CRASH_LOG.error("thread %s died of %s", name, args.exc_type.__name__)
        return
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    _CRASH_LOG.error("thread %s died of an uncaught exception", name, exc_info=exc_info)


def _field(value: str) -> str:
    """One line, bounded: header text from a stranger must not forge or flood log lines."""
    text = " ".join(value.split())
    return text if len(text) <= _MAX_FIELD else text[: _MAX_FIELD - 1] + "…"


def log_outcome(
    logger: logging.Logger,
    account: str,
    folder: str,
    uid: int,
    message_id: str,
    decision: str,
    replied: bool,
    reasons: Sequence[str],
) -> None:
    """Log the one INFO line that records how a message was handled.

    Text: `hello/INBOX uid 42 <id@example.com>: sales, replied` or
    `…: marketing, not replied (auto-submitted: auto-replied; hourly-cap: …)`.
    JSON: the same message plus the fields account, folder, uid, message_id, decision, replied and
    reasons (a list), for queries such as "every message not replied because of `hourly-cap`".
    """
    clean_reasons = [_field(r) for r in reasons]
    if replied:
        outcome = "replied"
    elif clean_reasons:
        outcome = f"not replied ({'; '.join(clean_reasons)})"
    else:
        outcome = "not replied"
    mid = _field(message_id) or "(no Message-ID)"
    logger.info(
        "%s/%s uid %d %s: %s, %s",
        account,
        folder,
        uid,
        mid,
        decision,
        outcome,
        extra={
            "account": account,
            "folder": folder,
            "uid": uid,
            "message_id": mid,
            "decision": decision,
            "replied": replied,
            "reasons": clean_reasons,
        },
    )
