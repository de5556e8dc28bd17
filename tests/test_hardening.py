"""Findings of an attack review, each pinned down: one process per store, a reply's copy filed
once, private store files, model files others cannot change, warnings for unverified TLS."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

import pytest

from devtools.mailharness import MailHarness
from tests.mailtools import (
    DaemonStarter,
    config_for,
    db,
    inquiry,
    synced,
    triage,
    wait_until,
)
from tests.test_ingest import HELLO, deliver
from triage.core.errors import ModelError, StoreInUseError
from triage.core.settings import ImapAccount, Settings, load_settings
from triage.decide.classify import card_path, load_classifier
from triage.ingest.mailbox import ImapMailbox
from triage.ingest.sync import SyncResult
from triage.ops.daemon import run_once
from triage.ops.runner import prepare, warn_unverified_certificates
from triage.ops.service import Service, Shared
from triage.store.db import Database
from triage.store.lock import exclusive, lock_path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "classifiers" / "model.skops"


def mode_of(path: Path) -> int:
    """The permission bits of `path`."""
    return stat.S_IMODE(path.stat().st_mode)


def can_lock(path: Path) -> bool:
    """Whether a fresh open file could take the exclusive lock on `path` right now."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # also releases the lock if it was taken
    return True


# -- one process per store ------------------------------------------------------------------------


def test_the_store_lock_is_exclusive_private_and_names_its_holder(tmp_path: Path) -> None:
    """Held, the lock file (0600) holds this process's pid and no other open file can lock it;
    the same process may hold it twice; released, anyone can take it."""
    store = tmp_path / "state" / "triage.db"
    with exclusive(store):
        lock = lock_path(store)
        assert lock == tmp_path / "state" / "triage.db.lock"
        assert mode_of(lock) == 0o600
        assert lock.read_text().strip() == str(os.getpid())
        assert not can_lock(lock)
        with exclusive(store):  # joined, not refused
            assert not can_lock(lock)
        assert not can_lock(lock)  # the outer holder still has it
    assert can_lock(lock)


def test_once_on_a_locked_store_exits_2_with_one_line_naming_store_and_pid(
    tmp_path: Path,
) -> None:
    """`triage once` refuses a store another process holds before it does anything: exit 2 and
    exactly one line on stderr, naming the store and the holder's pid."""
    store = tmp_path / "triage.db"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TRIAGE_IMAP__USERNAME": "u",
        "TRIAGE_IMAP__PASSWORD": "p",
        "TRIAGE_STORE__PATH": str(store),
    }
    with exclusive(store):
        result = subprocess.run(
            [sys.executable, "-m", "triage", "once"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"triage: the store {store} is in use by another triage process (pid {os.getpid()}); "
        "one process per store"
    ]
    assert result.stdout == ""


def test_a_forked_child_does_not_keep_the_store_locked(tmp_path: Path) -> None:
    """A flock belongs to the open file, which a fork shares: the child (an `ingest.workers`
    process) closes its copy, so the lock goes with its holder even while the child lives on."""
    store = tmp_path / "triage.db"
    ready_r, ready_w = os.pipe()
    release_r, release_w = os.pipe()
    with exclusive(store):
        pid = os.fork()
        if pid == 0:  # the child: report, then wait until the parent is done checking
            os.write(ready_w, b"x")
            os.read(release_r, 1)
            os._exit(0)
        os.read(ready_r, 1)
    try:
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # the child still runs
        assert can_lock(lock_path(store))
    finally:
        os.write(release_w, b"x")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, release_r, release_w):
            os.close(fd)


def test_the_in_process_error_is_a_store_error_with_the_pid(tmp_path: Path) -> None:
    """Another process holding the store: `StoreInUseError`, one line, the holder's pid."""
    store = tmp_path / "triage.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from triage.store.lock import exclusive\n"
            f"with exclusive({str(store)!r}):\n"
            "    print('held', flush=True); sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(StoreInUseError) as caught, exclusive(store):
            pass
        assert f"(pid {holder.pid})" in str(caught.value)
        assert "\n" not in str(caught.value)
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(30)
        holder.stdout.close()
    with exclusive(store):  # the holder's exit released it
        pass


@pytest.mark.mail
def test_triage_once_beside_a_running_daemon_exits_2_and_readers_still_work(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path, daemon_factory: DaemonStarter
) -> None:
    """`triage run` (with a worker process) holds the store: a second `triage once` exits 2 with
    one line naming the store and the daemon's pid, and changes nothing; the read-only commands
    work meanwhile. Once the daemon has stopped, `triage once` works again."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base, "\n[ingest]\nworkers = 1\n")
    store = base / "triage.db"
    proc = daemon_factory(config)
    wait_until(lambda: synced(base), 60)

    second = triage(config, "once")
    assert second.returncode == 2, second.stderr
    assert second.stderr.splitlines() == [
        f"triage: the store {store} is in use by another triage process (pid {proc.pid}); "
        "one process per store"
    ]
    for command in (("leads", "list"), ("review", "list"), ("digest", "--status")):
        reader = triage(config, *command)
        assert reader.returncode == 0, f"{command}: {reader.stderr}"
    assert proc.poll() is None

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    again = triage(config, "once")
    assert again.returncode == 0, again.stderr


@pytest.mark.mail
def test_a_killed_daemon_leaves_the_store_free_while_its_worker_lingers(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path, daemon_factory: DaemonStarter
) -> None:
    """SIGKILL to `triage run`: its worker process notices only within a second, but it never
    held the lock, so the store is free at once for the next start."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base, "\n[ingest]\nworkers = 1\n")
    proc = daemon_factory(config)
    wait_until(lambda: synced(base), 60)
    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert children, "the daemon has no worker process"
    proc.kill()
    proc.wait()
    lingering = [int(pid) for pid in children if _alive(int(pid))]
    assert can_lock(lock_path(base / "triage.db"))
    assert lingering, "the worker was gone before the lock was tried: nothing was tested"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- filing a reply's copy once -------------------------------------------------------------------


class _Crash(BaseException):
    """A power cut in the middle of `file_replies` (not an error anything would catch)."""


class _CrashAfterAppend(ImapMailbox):
    """A mailbox whose APPEND lands, and then the process "dies"."""

    def append(self, folder: str, raw: bytes, flags: Sequence[str] = ()) -> None:
        """APPEND, then crash."""
        super().append(folder, raw, flags)
        raise _Crash


@pytest.fixture
def unfiled(
    mail_harness: MailHarness, clean_mail: None, tmp_path: Path
) -> Iterator[tuple[Settings, Shared]]:
    """A store whose one reply was sent but not yet filed in Sent (and not \\Answered)."""
    base = tmp_path / "triage"
    config = config_for(mail_harness, base)
    assert triage(config, "once").returncode == 0  # the baseline on the empty mailbox
    deliver(mail_harness, [("alice@example.test", inquiry("alice@example.test", HELLO, 1))])
    settings = load_settings(config, environ={})
    shared = prepare(settings)

    class NoFiling(Service):
        def file_replies(
            self,
            mailbox: ImapMailbox,
            folder: str,
            uidvalidity: int,
            only: Collection[int] | None = None,
        ) -> None:
            """Leave the filing for the test."""

    services: list[Service] = []

    def factory(account: ImapAccount, mailbox: ImapMailbox) -> list[Callable[[], SyncResult]]:
        services.append(NoFiling(shared))
        return services[-1].folder_syncs(account, mailbox)

    try:
        assert run_once(settings, factory) == {"default": None}
        for service in services:
            service.close()
        with db(base) as conn:
            rows = conn.execute("SELECT state, filed_at FROM replies").fetchall()
        assert [tuple(r) for r in rows] == [("sent", None)]
        yield settings, shared
    finally:
        shared.close()


def _connected(mailbox: ImapMailbox) -> tuple[ImapMailbox, int]:
    mailbox.connect()
    return mailbox, mailbox.select("INBOX").uidvalidity


def _sent_copies_and_answered(harness: MailHarness) -> tuple[int, bool]:
    with harness.imap("hello") as client:
        client.select_folder("INBOX", readonly=True)
        flags = next(iter(client.get_flags(client.search("ALL")).values()))
        client.select_folder("Sent", readonly=True)
        return len(client.search("ALL")), b"\\Answered" in flags


@pytest.mark.mail
def test_two_processes_filing_the_same_reply_append_one_copy(
    mail_harness: MailHarness, unfiled: tuple[Settings, Shared], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two services (as two processes would) both see the reply waiting to be filed; the second
    acts on what it saw after the first has filed it: still one copy in Sent, and \\Answered."""
    settings, shared = unfiled
    account = settings.imap.all_accounts()[0]
    first, second = Service(shared), Service(shared)
    box_a, uidvalidity = _connected(ImapMailbox(account))
    box_b, _ = _connected(ImapMailbox(account))
    try:
        seen_by_second = second.outbox.pending_filing()
        assert len(seen_by_second) == 1
        first.file_replies(box_a, "INBOX", uidvalidity)
        monkeypatch.setattr(second.outbox, "pending_filing", lambda: seen_by_second)
        second.file_replies(box_b, "INBOX", uidvalidity)
    finally:
        for box in (box_a, box_b):
            box.close()
        for service in (first, second):
            service.close()
    assert _sent_copies_and_answered(mail_harness) == (1, True)


@pytest.mark.mail
def test_a_crash_right_after_the_append_never_files_a_second_copy(
    mail_harness: MailHarness, unfiled: tuple[Settings, Shared]
) -> None:
    """The process dies just after its APPEND landed, before anything else: the restarted
    service does not append the copy again (the claim was committed before the APPEND)."""
    settings, shared = unfiled
    account = settings.imap.all_accounts()[0]
    crashed = Service(shared)
    box, uidvalidity = _connected(_CrashAfterAppend(account))
    try:
        with pytest.raises(_Crash):
            crashed.file_replies(box, "INBOX", uidvalidity)
    finally:
        box.close()
        crashed.close()
    restarted = Service(shared)
    box, uidvalidity = _connected(ImapMailbox(account))
    try:
        restarted.file_replies(box, "INBOX", uidvalidity)
    finally:
        box.close()
        restarted.close()
    assert _sent_copies_and_answered(mail_harness) == (1, True)


# -- private store files --------------------------------------------------------------------------


def test_a_new_store_is_private_whatever_the_umask(tmp_path: Path) -> None:
    """The directory triage creates is 0700; the database, its -wal and -shm, and the lock file
    are 0600, even under a permissive umask."""
    store = tmp_path / "new" / "state" / "triage.db"
    old_umask = os.umask(0o002)
    try:
        with exclusive(store):
            database = Database(store)
            try:
                with database.transaction() as conn:
                    conn.execute("INSERT INTO kv (key, value) VALUES ('k', 'v')")
                companions = [Path(f"{store}{s}") for s in ("-wal", "-shm")]
                assert all(p.exists() for p in companions)
                assert {p.name: mode_of(p) for p in (store, *companions)} == {
                    "triage.db": 0o600,
                    "triage.db-wal": 0o600,
                    "triage.db-shm": 0o600,
                }
            finally:
                database.close()
            assert mode_of(lock_path(store)) == 0o600
    finally:
        os.umask(old_umask)
    assert mode_of(store.parent) == 0o700


def test_an_existing_writable_directory_is_warned_about_not_changed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory the operator made is theirs: left as it is, but a WARNING says that other
    users could replace the database, and how to fix it."""
    shared_dir = tmp_path / "shared"
    shared_dir.mkdir()
    shared_dir.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="triage.store.db"):
        Database(shared_dir / "triage.db").close()
    assert mode_of(shared_dir) == 0o777
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(shared_dir) in message
    assert f"chmod go-w {shared_dir}" in message


def test_a_private_existing_directory_gets_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """0755 is fine: only the owner can write."""
    (tmp_path / "ok").mkdir(mode=0o755)
    with caplog.at_level(logging.WARNING, logger="triage.store.db"):
        Database(tmp_path / "ok" / "triage.db").close()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_an_existing_store_readable_by_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database made 0644 before stores were private holds every message: a WARNING names it
    and the chmod; a 0600 one says nothing."""
    old = tmp_path / "old.db"
    Database(old).close()
    old.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="triage.store.db"):
        Database(old).close()
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(old) in message and "mode 0644" in message and f"chmod 600 {old}" in message
    caplog.clear()
    old.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="triage.store.db"):
        Database(old).close()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- model files ----------------------------------------------------------------------------------


@pytest.fixture
def model_copy(tmp_path: Path) -> Path:
    """The shipped model and its card, copied with mode 0644."""
    if not MODEL.exists():
        pytest.skip(f"no trained model at {MODEL}")
    target = tmp_path / "model.skops"
    shutil.copyfile(MODEL, target)
    shutil.copyfile(card_path(MODEL), card_path(target))
    for path in (target, card_path(target)):
        path.chmod(0o644)
    return target


@pytest.mark.parametrize(
    ("which", "mode"), [("model", 0o664), ("model", 0o646), ("card", 0o664)], ids=str
)
def test_a_model_file_others_can_write_is_refused(model_copy: Path, which: str, mode: int) -> None:
    """A model or card that group or others may change is refused with one line naming the
    file and `chmod go-w FILE`."""
    path = model_copy if which == "model" else card_path(model_copy)
    path.chmod(mode)
    with pytest.raises(ModelError) as caught:
        load_classifier(model_copy)
    message = str(caught.value)
    assert f"run `chmod go-w {path}`" in message
    assert "\n" not in message


def test_a_model_readable_by_all_but_writable_by_its_owner_only_loads(model_copy: Path) -> None:
    """0644 (as in a git checkout) is fine."""
    assert load_classifier(model_copy).classes


def test_a_model_saved_under_a_group_writable_umask_still_loads(
    model_copy: Path, tmp_path: Path
) -> None:
    """`triage train` writes files the daemon accepts, whatever the umask it ran with."""
    from triage.training.learn import save_model

    loaded = load_classifier(model_copy)
    target = tmp_path / "retrained" / "model.skops"
    old_umask = os.umask(0o002)
    try:
        save_model(loaded.pipeline, loaded.card, target)
    finally:
        os.umask(old_umask)
    assert load_classifier(target).classes == loaded.classes
    assert not mode_of(target) & 0o022
    assert not mode_of(card_path(target)) & 0o022


# -- unverified TLS -------------------------------------------------------------------------------


def test_unverified_certificates_are_warned_about_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`verify_certificates = false` logs a WARNING naming the account (and one for SMTP)."""
    settings = load_settings(
        None,
        environ={},
        overrides={
            "imap": {
                "username": "u",
                "password": "p",
                "host": "imap.example.com",
                "verify_certificates": False,
            },
            "smtp": {"host": "smtp.example.com", "verify_certificates": False},
        },
    )
    with caplog.at_level(logging.WARNING, logger="triage.ops.runner"):
        warn_unverified_certificates(settings)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2
    assert messages[0].startswith("imap account default: verify_certificates = false")
    assert "imap.example.com" in messages[0]
    assert messages[1].startswith("smtp: verify_certificates = false")

    caplog.clear()
    verified = load_settings(
        None, environ={}, overrides={"imap": {"username": "u", "password": "p"}}
    )
    with caplog.at_level(logging.WARNING, logger="triage.ops.runner"):
        warn_unverified_certificates(verified)
    assert caplog.records == []
