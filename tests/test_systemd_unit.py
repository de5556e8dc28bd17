"""The systemd units in config/ (the daemon's and the web console's): systemd accepts them without
a warning, and they keep their hardening."""

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
WEB_UNIT = ROOT / "config" / "triage-web.service"
INSTALLED_EXEC = "/opt/triage/.venv/bin/triage"
# Each unit and the `triage` command it starts.
UNITS = {"triage.service": (UNIT, "run"), "triage-web.service": (WEB_UNIT, "web")}


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


@pytest.fixture(params=sorted(UNITS))
def local_unit(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A copy of each unit whose ExecStart names this checkout's real `triage` (verify checks
    that the binary exists, and /opt/triage does not exist on a build machine)."""
    name: str = request.param
    unit, command = UNITS[name]
    text = unit.read_text()
    assert f"ExecStart={INSTALLED_EXEC} {command}" in text
    copy = tmp_path / name
    copy.write_text(text.replace(INSTALLED_EXEC, str(_triage_executable())))
    return copy


def test_systemd_analyze_verify_accepts_the_units_without_warnings(local_unit: Path) -> None:
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


def test_systemd_rates_the_units_well_hardened(local_unit: Path) -> None:
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
        "LimitNOFILE": ["16384"],
    }
    for key, values in expected.items():
        assert d.get(key) == values, key
    assert "TRIAGE_CONFIG=/etc/triage/triage.toml" in d["Environment"]
    assert d["RestartSec"] and d["TimeoutStopSec"]


HARDENING = (
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateDevices",
    "NoNewPrivileges",
    "CapabilityBoundingSet",
    "RestrictSUIDSGID",
    "RestrictNamespaces",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectControlGroups",
    "ProtectProc",
    "RestrictAddressFamilies",
    "SystemCallFilter",
    "UMask",
)


def test_the_web_unit_runs_the_console_as_the_daemons_user_with_the_same_hardening() -> None:
    """Same user, config file and state directory as triage.service (one store), every
    hardening option the daemon's unit has with the same value, `triage web` as the command,
    restarts but not on a configuration error, and bounded memory and tasks."""
    daemon = _directives(UNIT.read_text())
    web = _directives(WEB_UNIT.read_text())
    for key in ("User", "Group", "StateDirectory", "WorkingDirectory", *HARDENING):
        assert web.get(key) == daemon.get(key), key
    assert web["ExecStart"] == [f"{INSTALLED_EXEC} web"]
    assert "TRIAGE_CONFIG=/etc/triage/triage.toml" in web["Environment"]
    assert "XDG_DATA_HOME=/var/lib" in web["Environment"]
    assert web["Restart"] == ["on-failure"]
    assert web["RestartPreventExitStatus"] == ["2"]
    assert web["MemoryMax"] and web["TasksMax"]
    assert web["WantedBy"] == ["multi-user.target"]


def test_the_web_unit_cannot_read_the_mail_passwords() -> None:
    """The password files docs/operations.md installs are inaccessible to the console; it may
    write only the store and the reply templates (its template editor), and reach only
    localhost."""
    web = _directives(WEB_UNIT.read_text())
    operations = (ROOT / "docs" / "operations.md").read_text()
    hidden = web["InaccessiblePaths"][0].split()
    for name in ("imap", "smtp"):
        path = f"/etc/triage/{name}.password"
        assert path in operations
        assert f"-{path}" in hidden
    assert web["ReadWritePaths"] == ["/var/lib/triage -/etc/triage/templates"]
    assert web["IPAddressDeny"] == ["any"]
    assert web["IPAddressAllow"] == ["localhost"]


def test_the_console_commands_start_without_the_mail_password_files(tmp_path: Path) -> None:
    """Settings whose password files cannot be read load for `triage users` and `triage web`
    (the same loader): the console never reads them, so the unit may hide them."""
    config = tmp_path / "triage.toml"
    config.write_text(
        '[imap]\nusername = "hello@example.com"\n'
        f'password_file = "{tmp_path}/hidden/imap.password"\n'
        '[smtp]\nusername = "hello@example.com"\n'
        f'password_file = "{tmp_path}/hidden/smtp.password"\n'
        f'[store]\npath = "{tmp_path}/triage.db"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "triage", "--config", str(config)]
    listed = subprocess.run(
        [*run, "users", "list"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert listed.returncode == 0, listed.stderr
    assert "no users" in listed.stdout
    # Any other command still needs them.
    checked = subprocess.run(
        [*run, "check-config"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert checked.returncode == 2
    assert "imap.password" in checked.stderr
