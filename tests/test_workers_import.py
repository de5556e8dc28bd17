"""Importing the worker-process module does no work: pickling hooks come with the pool."""

from __future__ import annotations

import subprocess
import sys

# The modules `triage.ingest.workers` imports come first: numpy and scipy register reducers of
# their own when imported.
PROBE = """
import copyreg
import triage.core.models, triage.decide.classify, triage.decide.dispose, triage.decide.guards
import triage.parsing, triage.pipeline
before = dict(copyreg.dispatch_table)
import triage.ingest.workers
after = dict(copyreg.dispatch_table)
print(sorted(str(k) for k in set(after) - set(before)))
"""


def test_importing_workers_registers_no_pickle_reducers() -> None:
    """`copyreg.dispatch_table` is the same before and after `import triage.ingest.workers` (in
    a fresh interpreter, its dependencies imported first); the reducers are registered when a
    `DecidePool` starts."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
