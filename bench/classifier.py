"""Classifier speed: model load, one-message prediction, batch throughput.

    python -m bench.classifier                      # shipped model, 5,000 corpus messages
    python -m bench.classifier --messages 200 --repeat 5 --no-cold   # a quick smoke run

Targets: the model loads in ≤ 300 ms, one message is classified in ≤ 2 ms, a batch runs at
≥ 5,000 messages/s. Prediction is what the daemon calls: `Classifier.classify_many` with header
rules and explanations, on messages already parsed (parsing is `bench.parse`'s business). The
messages are the project's hand-written corpus, repeated to the requested count.

The first import of scikit-learn costs about 1.5 s and is paid once per process, whatever the
model. It is measured in a fresh interpreter and reported on its own line; "cold load" is the
load in that same fresh interpreter after the imports, "warm load" the median in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from triage.core.models import InboundMessage
from triage.decide.classify import Classifier, load_classifier, repo_root
from triage.ingest.sources import iter_sources
from triage.parsing import parse

REPO = repo_root()
MODEL = REPO / "classifiers" / "model.skops"
CORPUS = REPO / "classifiers" / "corpus"

Row = dict[str, str | float | bool]

# Runs in a fresh interpreter: time the imports a model load needs, then the load itself.
_COLD = """
import json, sys, time
t0 = time.perf_counter()
import sklearn.calibration, sklearn.feature_extraction.text, sklearn.pipeline, sklearn.svm
import skops.io
from triage.decide.classify import load_classifier
from pathlib import Path
t1 = time.perf_counter()
load_classifier(Path(sys.argv[1]))
t2 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "load": t2 - t1}))
"""


def corpus_messages(count: int) -> list[InboundMessage]:
    """`count` parsed messages: the corpus in a stable order, repeated as needed."""
    parsed = [parse(item.raw) for item in iter_sources([CORPUS]) if item.raw is not None]
    if not parsed:  # a checkout without the corpus: a few plain inquiries
        parsed = [
            InboundMessage(
                message_id=f"<b{i}@bench>",
                subject="Quote request",
                text=f"Please send a price for {i} units, delivery next month.",
                new_text=f"Please send a price for {i} units, delivery next month.",
            )
            for i in range(10)
        ]
    return [parsed[i % len(parsed)] for i in range(count)]


def cold_load(model: Path) -> tuple[float, float]:
    """(seconds of the imports, seconds of the load) in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", _COLD, str(model)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return float(data["imports"]), float(data["load"])


def warm_load(model: Path, repeat: int) -> float:
    """Median seconds of `load_classifier` in this process (imports already done)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        load_classifier(model)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def single(classifier: Classifier, messages: Sequence[InboundMessage]) -> tuple[float, float]:
    """(median, 99th percentile) seconds to classify one message at a time."""
    classifier.classify(messages[0])  # first call builds the vocabulary lookup
    times = []
    for msg in messages:
        started = time.perf_counter()
        classifier.classify(msg)
        times.append(time.perf_counter() - started)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def batch(
    classifier: Classifier, messages: Sequence[InboundMessage], repeat: int
) -> tuple[float, float]:
    """Messages per second of `classify_many` over `messages`: (wall clock, CPU time), best of
    `repeat` runs. On a busy machine the CPU-time rate shows what one idle core achieves."""
    wall = cpu = float("inf")
    for _ in range(max(1, repeat)):
        started, started_cpu = time.perf_counter(), time.process_time()
        classifier.classify_many(messages)
        wall = min(wall, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - started_cpu)
    return len(messages) / wall, len(messages) / max(cpu, 1e-9)


def _row(measure: str, value: float, unit: str, target: str, ok: bool | None = None) -> Row:
    row: Row = {"measure": measure, "value": round(value, 3), "unit": unit, "target": target}
    if ok is not None:
        row["ok"] = ok
    return row


def run(
    model: Path = MODEL, messages: int = 5000, repeat: int = 20, cold: bool = True
) -> list[Row]:
    """Measure and return one row per figure (`measure`, `value`, `unit`, `target`, `ok`)."""
    rows: list[Row] = []
    if cold:
        imports, load = cold_load(model)
        rows.append(
            _row(
                "first import of scikit-learn, skops, triage.decide.classify",
                imports * 1e3,
                "ms",
                "-",
            )
        )
        rows.append(
            _row(
                "cold load (fresh process, after the imports)",
                load * 1e3,
                "ms",
                "≤ 300",
                load <= 0.3,
            )
        )
    load = warm_load(model, max(1, repeat // 4))
    rows.append(_row("warm load (median)", load * 1e3, "ms", "≤ 300", load <= 0.3))
    classifier = load_classifier(model)
    sample = corpus_messages(messages)
    median, p99 = single(classifier, sample[: min(len(sample), 1000)])
    rows.append(_row("one message (median)", median * 1e3, "ms", "≤ 2", median <= 0.002))
    rows.append(_row("one message (99th percentile)", p99 * 1e3, "ms", "-"))
    rate, cpu_rate = batch(classifier, sample, max(1, repeat // 10))
    rows.append(_row(f"batch of {len(sample)}", rate, "msgs/s", "≥ 5,000", rate >= 5000))
    rows.append(_row(f"batch of {len(sample)} (CPU time)", cpu_rate, "msgs/s", "≥ 5,000"))
    return rows


def table(rows: Sequence[Row]) -> str:
    """The rows as a markdown table."""
    lines = ["| measure | value | unit | target | ok |", "|---|---:|---|---|---|"]
    for r in rows:
        ok = {True: "yes", False: "**no**"}.get(r.get("ok"), "")  # type: ignore[arg-type]
        lines.append(f"| {r['measure']} | {r['value']:,} | {r['unit']} | {r['target']} | {ok} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: print the markdown table (or JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--no-cold", action="store_true", help="skip the fresh-process run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = run(args.model, args.messages, args.repeat, cold=not args.no_cold)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    # Wall-clock figures depend on what else runs: say how busy the machine was.
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.model.name}, {os.cpu_count()} CPUs, load average {load}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
