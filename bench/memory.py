"""Resident memory of `triage run` from /proc/PID/status, its worker processes included.

`VmRSS` is what a process holds now, `VmHWM` the most it ever held. With `ingest.workers` the
parsing and classifying happen in child processes, so a snapshot adds up the whole process tree:
that is what the machine has to provide. (Pages shared between parent and forked children count
once per process here, so the sum errs on the high side.)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024


def _status_kib(pid: int) -> dict[str, int]:
    """The `Vm…` lines of /proc/PID/status in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Vm") and value.strip().endswith("kB"):
            out[key] = int(value.split()[0])
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, from /proc/PID/task/*/children."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def _pss_kib(pid: int) -> int:
    """Proportional set size: each shared page divided among the processes sharing it."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds `pid` has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Snapshot:
    """Memory of a process tree at one moment, in bytes.

    `main_rss`/`main_hwm` are the top process's own figures; `rss`/`hwm` add its descendants;
    `pss` is the tree's proportional set size, which counts pages shared copy-on-write with
    forked workers once.
    """

    rss: int
    hwm: int
    processes: int
    main_rss: int = 0
    main_hwm: int = 0
    pss: int = 0

    @property
    def pss_mib(self) -> float:
        """The tree's proportional set size in MiB."""
        return self.pss / MIB

    @property
    def main_rss_mib(self) -> float:
        """The top process's resident set in MiB."""
        return self.main_rss / MIB

    @property
    def main_hwm_mib(self) -> float:
        """The top process's peak resident set in MiB."""
        return self.main_hwm / MIB

    @property
    def rss_mib(self) -> float:
        """Current resident set in MiB."""
        return self.rss / MIB

    @property
    def hwm_mib(self) -> float:
        """Peak resident set in MiB."""
        return self.hwm / MIB


def snapshot(pid: int) -> Snapshot:
    """VmRSS, VmHWM and PSS of `pid` plus its descendants (a vanished child is skipped)."""
    rss = hwm = pss = count = 0
    main = _status_kib(pid)
    for p in [pid, *descendants(pid)]:
        try:
            status = _status_kib(p)
            pss += _pss_kib(p) * 1024
        except OSError:
            continue
        rss += status.get("VmRSS", 0) * 1024
        hwm += status.get("VmHWM", 0) * 1024
        count += 1
    return Snapshot(
        rss=rss,
        hwm=hwm,
        processes=count,
        main_rss=main.get("VmRSS", 0) * 1024,
        main_hwm=main.get("VmHWM", 0) * 1024,
        pss=pss,
    )


class PeakSampler:
    """Samples a process tree's PSS while it works: the kernel keeps no PSS high-water mark.

    VmHWM is exact but per process; with forked workers their sum counts every shared page once
    per process. Sampling every `interval` seconds can miss a short spike, so this errs low by
    what a spike shorter than the interval adds; the VmHWM figures are reported beside it.
    """

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_pss = 0
        self._next = 0.0

    def sample(self) -> None:
        """Read the tree's PSS if the interval has passed since the last reading."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            self.peak_pss = max(self.peak_pss, snapshot(self.pid).pss)


@dataclass(frozen=True)
class MemoryResult:
    """Steady memory before and after the backlog, and the peak over the whole run.

    One process (`ingest.workers = 0`): VmHWM and VmRSS of `triage run`, as the kernel counts
    them. With worker processes: the PSS of the whole tree (sampled peak, steady before and
    after), because their VmRSS figures share most pages with the parent's.
    """

    before: Snapshot
    after: Snapshot
    peak_pss: int = 0

    @property
    def by_pss(self) -> bool:
        """True when the figures are the tree's PSS (there are worker processes)."""
        return self.after.processes > 1

    @property
    def peak_mib(self) -> float:
        """The highest memory seen: VmHWM of the process, or the tree's sampled PSS."""
        if self.by_pss:
            return max(self.peak_pss, self.before.pss, self.after.pss) / MIB
        return max(self.before.hwm_mib, self.after.hwm_mib)

    @property
    def steady_mib(self) -> tuple[float, float]:
        """Steady memory (VmRSS, or the tree's PSS) before and after the backlog."""
        if self.by_pss:
            return self.before.pss_mib, self.after.pss_mib
        return self.before.rss_mib, self.after.rss_mib

    @property
    def growth(self) -> float:
        """Steady memory after the backlog relative to before it (0.05 = 5 % more)."""
        before, after = self.steady_mib
        return after / before - 1.0 if before else 0.0
