"""Loading the model imports what predicting needs, not every scikit-learn module (memory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import json, sys
from pathlib import Path
from triage.decide.classify import load_classifier
load_classifier(Path(sys.argv[1]))
unneeded = ("pytest", "_pytest", "sklearn.datasets", "sklearn.tests")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(unneeded))))
"""


def test_the_daemon_loads_the_model_without_every_estimator() -> None:
    """A fresh process that loads the shipped model has imported neither pytest nor the
    scikit-learn modules skops would list by default (data sets, tests)."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(ROOT / "classifiers" / "model.skops")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
