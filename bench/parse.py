"""Parse throughput of `triage.parsing.parse` next to the stdlib `email` path, on real mail.

The corpus is every message under `../shared/corpora/other` and `../shared/corpora/parser_torture`
plus the project's own `classifiers/corpus`, read with
`triage.ingest.sources` (so mbox files count as
their messages), parsed by both parsers in this one process:

    python -m bench.parse              # the whole corpus
    python -m bench.parse --limit 200  # a quick smoke run

Both parsers take turns on blocks of messages (so load changes on the machine hit both alike); the
stdlib path is what a straightforward implementation does:
`email.message_from_bytes(raw, policy=email.policy.default)` and then
`msg.get_body(preferencelist=("plain", "html")).get_content()`.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from triage.ingest.sources import iter_sources
from triage.parsing import parse

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
SOURCES = (CORPORA / "other", CORPORA / "parser_torture", REPO / "classifiers" / "corpus")

Row = dict[str, str | int | float]
BLOCK = 250  # messages parsed by one parser before the other takes its turn


def corpus(limit: int | None = None) -> list[tuple[str, bytes]]:
    """The benchmark's messages as (label, raw bytes), in a stable order."""
    messages: list[tuple[str, bytes]] = []
    for item in iter_sources([path for path in SOURCES if path.exists()]):
        if item.raw is not None:
            messages.append((item.path, item.raw))
            if limit is not None and len(messages) >= limit:
                break
    return messages


def stdlib_parse(raw: bytes) -> str:
    """The straightforward stdlib path: policy.default, then the preferred body's content."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    body = message.get_body(preferencelist=("plain", "html"))
    return str(body.get_content()) if body is not None else ""


def triage_parse(raw: bytes) -> str:
    """triage's parser, reduced to the same kind of result."""
    return parse(raw).text


class _Tally:
    """Time, failures and the slowest message of one parser."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.errors = 0
        self.slowest = 0.0
        self.slowest_label = ""

    def time(self, parser: Callable[[bytes], object], label: str, raw: bytes) -> None:
        before, cpu_before = time.perf_counter(), time.process_time()
        try:
            parser(raw)
        except Exception:  # noqa: BLE001 - the stdlib path raises on real mail; that is counted
            self.errors += 1
        spent = time.perf_counter() - before
        self.cpu_seconds += time.process_time() - cpu_before
        self.seconds += spent
        if spent > self.slowest:
            self.slowest, self.slowest_label = spent, label

    def row(self, messages: int) -> Row:
        return {
            "parser": self.name,
            "messages": messages,
            "seconds": round(self.seconds, 3),
            "msgs_per_s": round(messages / self.seconds, 1) if self.seconds else 0.0,
            # CPU time is what this process used: less disturbed by other load on the machine.
            "cpu_msgs_per_s": round(messages / self.cpu_seconds, 1) if self.cpu_seconds else 0.0,
            "errors": self.errors,
            "slowest_ms": round(self.slowest * 1000, 1),
            "slowest": self.slowest_label,
        }


def run(limit: int | None = None) -> list[Row]:
    """Measure both parsers on the corpus; the triage row carries its speed-up over stdlib.

    The parsers take turns block by block: a change in machine load during the run affects both
    alike, yet each parser runs warm, as it would in a process of its own.
    """
    messages = corpus(limit)
    ours, stdlib = _Tally("triage.parsing.parse"), _Tally("stdlib policy.default + get_body")
    for start in range(0, len(messages), BLOCK):
        block = messages[start : start + BLOCK]
        for tally, parser in ((ours, triage_parse), (stdlib, stdlib_parse)):
            for label, raw in block:
                tally.time(parser, label, raw)
    rows = [ours.row(len(messages)), stdlib.row(len(messages))]
    base = float(rows[1]["msgs_per_s"]) or 1.0
    rows[0]["ratio"] = round(float(rows[0]["msgs_per_s"]) / base, 2)
    rows[1]["ratio"] = 1.0
    return rows


def table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table."""
    columns = [
        "parser",
        "messages",
        "seconds",
        "msgs_per_s",
        "cpu_msgs_per_s",
        "ratio",
        "errors",
        "slowest_ms",
    ]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += [
        "| " + " | ".join(str(row.get(column, "")) for column in columns) + " |" for row in rows
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the throughput table (and each parser's slowest message)."""
    parser = argparse.ArgumentParser(prog="python -m bench.parse", description=__doc__)
    parser.add_argument("--limit", type=int, default=None, help="parse only the first N messages")
    args = parser.parse_args(argv)
    rows = run(args.limit)
    if not rows[0]["messages"]:
        print(f"no messages found under {', '.join(str(path) for path in SOURCES)}")
        return 1
    print(table(rows))
    print()
    print("load average (1, 5, 15 min): " + ", ".join(f"{load:.2f}" for load in os.getloadavg()))
    for row in rows:
        print(f"slowest for {row['parser']}: {row['slowest_ms']} ms, {row['slowest']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
