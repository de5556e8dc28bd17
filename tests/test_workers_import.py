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

# A pool starting (one worker, the shipped model) registers them: a mappingproxy and the
# pipeline's frozen dataclasses get reducers, before the fork so the worker inherits them.
POOL_PROBE = """
import copyreg
from types import MappingProxyType
from triage.core.models import Classification, InboundMessage
from triage.core.settings import SHIPPED_MODEL
from triage.decide.classify import ModelHandle
from triage.decide.guards import GuardContext
from triage.ingest.workers import DecidePool
wanted = (MappingProxyType, InboundMessage, Classification)
print(sum(k in copyreg.dispatch_table for k in wanted))
pool = DecidePool(1, ModelHandle(SHIPPED_MODEL), GuardContext())
try:
    print(sum(k in copyreg.dispatch_table for k in wanted))
finally:
    pool.close()
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
    started = subprocess.run(
        [sys.executable, "-c", POOL_PROBE], capture_output=True, text=True, check=False, timeout=120
    )
    assert started.returncode == 0, started.stderr
    assert started.stdout.split() == ["0", "3"]
