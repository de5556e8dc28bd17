"""No message up to 25 MiB costs more than 1 s of CPU or 100 MiB of memory to parse and classify.

Each hostile shape of `tests.bounded_probe.SHAPES` (giant texts, deep and wide MIME trees, huge
headers, pathological HTML, encodings and quoting) is measured in its own forked child of one
probe process that has loaded the shipped model: CPU seconds of parse, feature extraction,
`classify_many` and the etiquette verdict, and the growth of peak resident memory. The bounds are
the requirement; the parser aims well below them (a few tenths of a second at most) so that a
loaded two-core CI machine does not make this flaky. Run with `-s` to see every figure: one JSON
line per shape and a table at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.bounded_probe import SHAPES
from tests.test_model_cli import KEYS
from triage.parsing import parse
from triage.parsing.htmltext import MAX_QUOTE_LEVELS
from triage.parsing.message import MAX_TEXT_CHARS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MAX_CPU_SECONDS = 1.0
MAX_MEMORY_MIB = 100.0
# Shapes small enough to write out and give to the real command in one run.
CLI_SHAPES = [
    "html_review_case",
    "html_quote_control_chars",
    "html_huge_numeric_entity",
    "multipart_deep",
    "rfc822_deep",
    "addresses_all_hostile",
    "headers_encoded_words",
    "content_type_params",
    "from_long_display_name",
    "mbox_from_line_only",
]


class Probe:
    """The probe process: one shape name in, one JSON report out."""

    def __init__(self, stdin: IO[str], stdout: IO[str]) -> None:
        self.stdin = stdin
        self.stdout = stdout
        self.reports: dict[str, dict[str, Any]] = {}

    def measure(self, shape: str) -> dict[str, Any]:
        """The probe's report on `shape`."""
        self.stdin.write(shape + "\n")
        self.stdin.flush()
        line = self.stdout.readline()
        assert line, f"the probe ended without reporting on {shape}"
        report: dict[str, Any] = json.loads(line)
        self.reports[shape] = report
        return report


def _summary(reports: dict[str, dict[str, Any]]) -> str:
    rows = [f"{'shape':34} {'MiB in':>7} {'CPU s':>7} {'parse s':>8} {'mem MiB':>8}"]
    for shape, report in reports.items():
        rows.append(
            f"{shape:34} {report.get('raw_mib', 0):7.2f} {report.get('cpu_s', -1):7.3f}"
            f" {report.get('parse_s', -1):8.3f} {report.get('memory_mib', -1):8.1f}"
        )
    return "\n".join(rows)


@pytest.fixture(scope="module")
def probe() -> Iterator[Probe]:
    """A running probe with the model loaded; prints the table of figures when done."""
    with subprocess.Popen(
        [sys.executable, "-m", "tests.bounded_probe"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        ready = json.loads(process.stdout.readline() or "{}")
        assert ready.get("ready"), "the probe did not start"
        running = Probe(process.stdin, process.stdout)
        yield running
        process.stdin.close()  # the probe ends at the end of its input
        process.wait(timeout=60)
    print(f"\nbounded work per message (model loaded in {ready['load_s']} s CPU):")
    print(_summary(running.reports))


@pytest.mark.parametrize("shape", list(SHAPES))
def test_hostile_message_costs_bounded_work(probe: Probe, shape: str) -> None:
    """Parse + classify of the shape stays within 1 s CPU and 100 MiB; `parse` did not fail on
    it (it never raises, but a bug would show as a "parser error" defect); the CLI printed one
    JSON line for it."""
    report = probe.measure(shape)
    print(json.dumps({k: v for k, v in report.items() if k not in ("defects", "cli_lines")}))
    assert "error" not in report, report["error"]
    figures = f"{shape}: {report['cpu_s']} s CPU, {report['memory_mib']} MiB"
    assert report["cpu_s"] <= MAX_CPU_SECONDS, figures
    assert report["memory_mib"] <= MAX_MEMORY_MIB, figures
    assert not [d for d in report["defects"] if d.startswith("parser error")], report["defects"]
    lines = report["cli_lines"]
    assert len(lines) == 1, lines
    assert set(json.loads(lines[0])) == KEYS


def test_deep_quotes_are_cut_while_converting_and_recorded() -> None:
    """The review's message: quote prefixes stop at eight levels and the text at the body limit,
    both recorded as defects; control characters in the HTML are text, not quote marks."""
    msg = parse(SHAPES["html_review_case"]())
    assert len(msg.text) <= MAX_TEXT_CHARS
    assert msg.text.splitlines()[0] == "> " * MAX_QUOTE_LEVELS + "w"
    assert "text too long; truncated" in msg.defects
    assert f"quotes nested 8000 deep; {MAX_QUOTE_LEVELS} levels shown" in msg.defects
    assert ">" not in parse(SHAPES["html_quote_control_chars"]()).text


def test_cli_prints_one_json_line_per_hostile_message(tmp_path: Path) -> None:
    """`triage classify --json` on a directory of hostile messages: one valid line each."""
    for shape in CLI_SHAPES:
        (tmp_path / f"{shape}.eml").write_bytes(SHAPES[shape]())
    result = subprocess.run(
        [sys.executable, "-m", "triage", "classify", "--json", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).stem for r in records] == sorted(CLI_SHAPES)
    for record in records:
        assert set(record) == KEYS
        # An empty message is reported as not a message; nothing may fail in the parser.
        assert record["error"] in (None, "not a message: empty message"), record
