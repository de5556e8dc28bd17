"""`triage classify --json` on every malformed or odd message of the parser torture corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_model_cli import KEYS
from triage.ingest.sources import iter_sources

TORTURE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "parser_torture"

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(not TORTURE.is_dir(), reason="../shared/corpora is not present"),
]


def test_one_valid_json_line_per_message_and_exit_0() -> None:
    """Every message (mbox files count each message) yields exactly one JSON object with every
    field, unreadable ones included (then `error` says why and nothing may be answered)."""
    expected = [item.path for item in iter_sources([TORTURE])]
    result = subprocess.run(
        [sys.executable, "-m", "triage", "classify", "--json", str(TORTURE)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["path"] for r in records] == expected
    for record in records:
        assert set(record) == KEYS
        if record["error"] is not None:
            assert record["label"] is None and record["may_reply"] is False
    assert "Traceback" not in result.stderr
