"""Parse throughput of `triage.parsing.parse` next to the stdlib `email` path, on real mail.

The corpus is every message under `../shared/corpora/other` and `../shared/corpora/parser_torture`
plus the project's own `classifiers/corpus`, read with `triage.sources` (so mbox files count as
their messages). Both parsers run in this process, on the same bytes, one after the other:

    python -m bench.parse              # the whole corpus
    python -m bench.parse --limit 200  # a quick smoke run

The stdlib path is what a straightforward implementation does:
`email.message_from_bytes(raw, policy=email.policy.default)` and then
`msg.get_body(preferencelist=("plain", "html")).get_content()`.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from triage.parsing import parse
from triage.sources import iter_sources

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
SOURCES = (CORPORA / "other", CORPORA / "parser_torture", REPO / "classifiers" / "corpus")

Row = dict[str, str | int | float]


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


def measure(
    name: str, parser: Callable[[bytes], object], messages: Sequence[tuple[str, bytes]]
) -> Row:
    """Parse every message once; the total time, the rate, failures and the slowest message."""
    errors = 0
    slowest, slowest_label = 0.0, ""
    started = time.perf_counter()
    for label, raw in messages:
        before = time.perf_counter()
        try:
            parser(raw)
        except Exception:  # noqa: BLE001 - the stdlib path raises on real mail; that is counted
            errors += 1
        spent = time.perf_counter() - before
        if spent > slowest:
            slowest, slowest_label = spent, label
    seconds = time.perf_counter() - started
    return {
        "parser": name,
        "messages": len(messages),
        "seconds": round(seconds, 3),
        "msgs_per_s": round(len(messages) / seconds, 1) if seconds else 0.0,
        "errors": errors,
        "slowest_ms": round(slowest * 1000, 1),
        "slowest": slowest_label,
    }


def run(limit: int | None = None) -> list[Row]:
    """Measure both parsers on the corpus; the triage row carries its speed-up over stdlib."""
    messages = corpus(limit)
    ours = measure("triage.parsing.parse", triage_parse, messages)
    stdlib = measure("stdlib policy.default + get_body", stdlib_parse, messages)
    base = float(stdlib["msgs_per_s"]) or 1.0
    ours["ratio"] = round(float(ours["msgs_per_s"]) / base, 2)
    stdlib["ratio"] = 1.0
    return [ours, stdlib]


def table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table."""
    columns = ["parser", "messages", "seconds", "msgs_per_s", "ratio", "errors", "slowest_ms"]
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
    for row in rows:
        print(f"slowest for {row['parser']}: {row['slowest_ms']} ms, {row['slowest']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
