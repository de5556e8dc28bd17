"""The systemd unit in config/: systemd accepts it without a warning, and it keeps its hardening."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "config" / "triage.service"
INSTALLED_EXEC = "/opt/triage/.venv/bin/triage"


def _directives(text: str) -> dict[str, list[str]]:
    """Key → every value it is given in the unit (comments and section headers skipped)."""
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def _systemd_analyze() -> str:
    """The path of systemd-analyze; installed with apt when missing and we are root, else skip."""
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("systemd-analyze is missing and installing the systemd package needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "systemd"]
    for attempt in ([install], [["apt-get", "update"], install]):
        if all(
            subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False).returncode
            == 0
            for cmd in attempt
        ):
            break
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.skip("systemd-analyze is missing and `apt-get install systemd` did not provide it")
    return found


def _triage_executable() -> Path:
    """The `triage` console script of the environment running the tests."""
    script = Path(sys.executable).parent / "triage"
    if not script.exists():
        pytest.skip(f"no `triage` script next to {sys.executable}: install the package")
    return script


@pytest.fixture
def local_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart names this checkout's real `triage` (verify checks that
    the binary exists, and /opt/triage does not exist on a build machine)."""
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_EXEC} run" in text
    copy = tmp_path / "triage.service"
    copy.write_text(text.replace(INSTALLED_EXEC, str(_triage_executable())))
    return copy


def test_systemd_analyze_verify_accepts_the_unit_without_warnings(local_unit: Path) -> None:
    """`systemd-analyze verify` exits 0 and prints nothing: it only warns (exit 0) about unknown
    keys or unparsable values, so silence is what proves every line is understood."""
    result = subprocess.run(
        [_systemd_analyze(), "verify", str(local_unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_systemd_rates_the_unit_well_hardened(local_unit: Path) -> None:
    """`systemd-analyze security` scores the sandboxing; 2.0 or less is its "OK" band, and a
    later edit that loosens the unit makes the score rise above it."""
    result = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", str(local_unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout + result.stderr)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot score units offline: {result.stderr.strip()}")
    assert float(match.group(1)) <= 2.0, result.stdout


def test_the_unit_keeps_the_settings_operations_md_describes() -> None:
    """Dedicated user, writable state dir only, reload by SIGHUP, restart on failure but not on a
    configuration error, the config file location and the install path, and a ceiling on memory
    and tasks (a message that needs more kills the service, which counts it as an attempt)."""
    d = _directives(UNIT.read_text())
    expected = {
        "User": ["triage"],
        "Group": ["triage"],
        "StateDirectory": ["triage"],
        "ReadWritePaths": ["/var/lib/triage"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["true"],
        "PrivateTmp": ["true"],
        "NoNewPrivileges": ["true"],
        "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
        "Restart": ["on-failure"],
        "RestartPreventExitStatus": ["2"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "ExecStart": [f"{INSTALLED_EXEC} run"],
        "WantedBy": ["multi-user.target"],
        "MemoryMax": ["1G"],
        "OOMPolicy": ["continue"],
        "TasksMax": ["64"],
    }
    for key, values in expected.items():
        assert d.get(key) == values, key
    assert "TRIAGE_CONFIG=/etc/triage/triage.toml" in d["Environment"]
    assert d["RestartSec"] and d["TimeoutStopSec"]
