"""`triage fleet status` as an operator runs it, on both backends: the instances with their
heartbeat and state, the leases each holds with generation and ages, the leases nobody holds;
`--json` for scripts; a missing SQLite store is one line, not an empty fleet."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.test_leads import ROOT
from tests.test_leads_cli import CONFIG, one_line_error, triage
from triage.cli.fleet import duration
from triage.core.settings import StoreSettings
from triage.ops.fleet import LEADER, LeaseManager
from triage.store import leases
from triage.store.db import Database


def write_config(base: Path, store: StoreSettings) -> Path:
    """The CLI tests' settings with `store` as the [store] section."""
    if store.is_postgresql:
        section = f'url = "{store.url}"\npassword_file = "{store.password_file}"'
    else:
        section = f'path = "{store.path}"'
    text = CONFIG.format(base=base, root=ROOT, recipients='"sales@example.test"')
    text = text.replace(f'path = "{base}/triage.db"', section)
    path = base / "triage.toml"
    path.write_text(text)
    return path


def test_status_lists_instances_their_leases_and_the_unheld(
    tmp_path: Path, store: StoreSettings
) -> None:
    """Two instances (one stopped at shutdown) and an expired lease: the live one with its
    accounts and the leader lease, the stopped one without any, the expired lease as unheld."""
    live = LeaseManager(lambda: Database(store), "web1:100:aaaa", ["sales", "support"], 5, 20)
    gone = LeaseManager(lambda: Database(store), "web2:200:bbbb", ["sales", "support"], 5, 20)
    live.tick()
    gone.tick()
    gone.release_all()
    with Database(store).transaction() as tx:
        assert leases.acquire(tx, "old-account", "web2:200:bbbb", 0.01) == 1
    time.sleep(0.05)
    config = write_config(tmp_path, store)

    shown = triage(config, "fleet", "status")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("web1:100:aaaa  live  heartbeat ")
    assert lines[0].endswith("  version 0.1.0  3 leases")
    assert lines[1].split() == ["LEASE", "GENERATION", "HELD", "FOR", "RENEWED", "EXPIRES", "IN"]
    assert [line.split()[:2] for line in lines[2:5]] == [
        [LEADER, "1"],
        ["sales", "1"],
        ["support", "1"],
    ]
    assert lines[5].startswith("web2:200:bbbb  stopping  heartbeat ")
    assert lines[5].endswith("  0 leases")
    assert lines[6] == "not held by anyone:"
    assert lines[7].split() == ["LEASE", "GENERATION", "FREE", "FOR"]
    assert lines[8].split()[:2] == ["old-account", "1"]
    assert len(lines) == 9

    data = json.loads(triage(config, "fleet", "status", "--json").stdout)
    [web1, web2] = data["instances"]
    assert (web1["id"], web1["state"], web1["version"]) == ("web1:100:aaaa", "live", "0.1.0")
    assert 0 <= web1["heartbeat_age"] < 20 and web1["host"] and web1["pid"] > 0
    assert [(x["name"], x["owner"], x["generation"]) for x in web1["leases"]] == [
        (LEADER, "web1:100:aaaa", 1),
        ("sales", "web1:100:aaaa", 1),
        ("support", "web1:100:aaaa", 1),
    ]
    assert all(0 < x["expires_in"] <= 20 and x["held_for"] >= 0 for x in web1["leases"])
    assert (web2["state"], web2["leases"]) == ("stopping", [])
    [old] = data["unheld"]
    assert (old["name"], old["owner"], old["generation"]) == ("old-account", "web2:200:bbbb", 1)
    assert old["expires_in"] < 0
    live.release_all()


def test_status_of_a_store_without_instances_and_of_a_missing_store(tmp_path: Path) -> None:
    """A store where no instance registered says so; a store.path that does not exist is one
    line on stderr (opening it would create an empty store and look like a quiet fleet)."""
    config = write_config(tmp_path, StoreSettings(path=tmp_path / "nowhere" / "triage.db"))
    one_line_error(triage(config, "fleet", "status"), 2, "no store at")
    Database(tmp_path / "triage.db").close()
    config = write_config(tmp_path, StoreSettings(path=tmp_path / "triage.db"))
    shown = triage(config, "fleet", "status")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("no instance has registered yet")
    data = json.loads(triage(config, "fleet", "status", "--json").stdout)
    assert (data["instances"], data["unheld"]) == ([], [])


def test_durations_are_short() -> None:
    assert [duration(s) for s in (0.04, 9.94, 42.4, 125, 7300, 3 * 86400)] == [
        "0.0s",
        "9.9s",
        "42s",
        "2m",
        "2h",
        "3d",
    ]
    assert duration(float("inf")) == "-" and duration(-3) == "0.0s"
