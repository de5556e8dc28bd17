"""The web console under a full store: page times of `triage web` with 10,000 leads and 100,000
messages.

1. A fresh store is filled as months of service would leave it: N messages spread over 90 days
   (sales, marketing, other, review in realistic shares, with subjects, text, explanations,
   reasons, replies sent for the answered ones) and L leads on the sales and marketing messages,
   in every status of the workflow, with owners and notes. One transaction, `executemany`:
   seconds, not minutes.
2. `triage web` starts as a child process on a free port (the real command, as an operator runs
   it), a user is added with `triage users add`, and the benchmark logs in through the form.
3. Each page is fetched `--requests` times over one keep-alive connection, in turn, and its
   p50 and p95 are reported; `{lead}` in a page's path is a random lead's id per request, so the
   lead pages are not one cached row.

The pages are given as NAME=PATH (`--page queue=/leads`); the figures are named
`console_NAME_p50_ms`, `console_NAME_p95_ms` (and `_max_ms`, `_requests`).

    python -m bench.console                          # 10,000 leads, 100,000 messages
    python -m bench.console --leads 1000 --messages 10000 --requests 50 \\
        --page dashboard=/dashboard --page decisions=/decisions

"While the daemon handles a backlog" (the acceptance of issue 15): `--with-backlog N` runs
`bench.backlog` (a private Dovecot and Postfix, `triage run` working through N new messages) in
a thread and measures the console while it runs. The two processes share the machine (CPU, disk)
but not the store: `bench.backlog` keeps its own fresh store, so the SQLite write lock the daemon
takes is not contended by the console's reads here.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.startup import REPO

DEFAULT_PAGES: dict[str, str] = {
    "queue": "/leads",
    "search": "/leads?status=new&q=logistics",
    "lead": "/leads/{lead}",
}
GOAL_P95_MS = 100.0
SEED = 20240601
DAYS = 90
USER = "bench"
PASSWORD = "bench console password"  # noqa: S105 - a throwaway user of a temporary store
READY_TIMEOUT = 30.0
# Shares of the decisions over the messages (the shipped model's cross-validation, roughly).
DECISION_SHARES = (("other", 0.50), ("marketing", 0.20), ("sales", 0.15), ("review", 0.15))
STATUS_SHARES = (
    ("new", 0.25),
    ("claimed", 0.15),
    ("contacted", 0.25),
    ("won", 0.10),
    ("lost", 0.10),
    ("dismissed", 0.15),
)
REVIEWED = 0.95  # share of the review items older than a day that a person labelled
STAFF = ("anna", "bert", "chen", "dora", "emil")
COMPANIES = ("Doe Logistics", "Acme Tools", "Nordwind", "Bluefin Foods", "Karst & Co", "Oakline")
SUBJECTS = {
    "sales": ("Quote for {n} units", "Pricing for {n} licences", "Order enquiry: {n} pallets"),
    "marketing": ("Newsletter sign-up", "Brochure request", "Webinar question"),
    "other": ("Re: invoice {n}", "Out of office", "Delivery status notification", "Weekly news"),
    "review": ("Question about {n} items", "Hello", "Following up"),
}
TERMS = {
    "sales": ("quote", "units", "price", "order", "delivery"),
    "marketing": ("newsletter", "brochure", "webinar", "information"),
    "other": ("invoice", "unsubscribe", "office", "notification"),
    "review": ("question", "items", "hello"),
}


# -- filling the store ----------------------------------------------------------------------


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _pick(rng: random.Random, shares: Sequence[tuple[str, float]]) -> str:
    names = [n for n, _ in shares]
    return rng.choices(names, weights=[w for _, w in shares])[0]


@dataclass
class Filled:
    """What the store holds after `fill`."""

    messages: int
    leads: int
    replies: int
    seconds: float
    lead_ids: list[int] = field(default_factory=list)


Rows = list[tuple[Any, ...]]
Candidate = tuple[int, str, datetime, str, str]  # message row, decision, arrival, sender, company


def _messages(
    rng: random.Random, now: datetime, messages: int, days: int
) -> tuple[Rows, Rows, list[Candidate]]:
    """Message rows, the replies sent to the answered ones, and those that may become leads."""
    message_rows: Rows = []
    reply_rows: Rows = []
    candidates: list[Candidate] = []
    for i in range(1, messages + 1):
        decision = _pick(rng, DECISION_SHARES)
        label = decision if decision != "review" else rng.choice(("sales", "marketing", "other"))
        at = now - timedelta(seconds=rng.uniform(0, days * 86400))
        company = rng.choice(COMPANIES)
        sender = f"p{i}@{company.split()[0].lower()}.example"
        subject = rng.choice(SUBJECTS[decision]).format(n=rng.randint(2, 500))
        confidence = rng.uniform(0.45, 0.7) if decision == "review" else rng.uniform(0.72, 0.99)
        terms = rng.sample(TERMS[decision], 2)
        body = (
            f"Hello,\n\n{subject}. We are {company} and would like to know more about"
            f" {' and '.join(terms)}.\n\nBest regards\n{sender}\n"
        ) * 2
        probabilities = {label: round(confidence, 4)}
        for other in ("sales", "marketing", "other"):
            probabilities.setdefault(other, round((1 - confidence) / 2, 4))
        may_reply = decision in ("sales", "marketing")
        # People work the review queue: most items older than a day carry a person's label.
        reviewed = None
        if decision == "review" and at < now - timedelta(days=1) and rng.random() < REVIEWED:
            reviewed = at + timedelta(hours=rng.uniform(0.5, 24))
        reviewed_label = label if reviewed else None
        reviewer = rng.choice(STAFF) if reviewed else ""
        message_rows.append(
            (
                i,
                "default",
                "INBOX",
                1,
                i,
                f"<m{i}@bench.example>",
                "done",
                sender,
                subject,
                "en",
                body,
                label,
                confidence,
                decision,
                json.dumps(probabilities),
                json.dumps(terms),
                int(may_reply),
                json.dumps([] if may_reply else ["no reply for this decision"]),
                reviewed_label,
                reviewer,
                _stamp(at),
                _stamp(reviewed or at),
            )
        )
        if may_reply:
            sent = at + timedelta(seconds=rng.uniform(1, 30))
            reply_rows.append(
                (
                    i,
                    f"<r{i}@bench.example>",
                    sender,
                    sender,
                    sender.partition("@")[2],
                    "hello@bench.example",
                    decision,
                    "live",
                    "sent",
                    b"Subject: Thank you\r\n\r\nThank you for your message.\r\n",
                    _stamp(at),
                    _stamp(at),
                    _stamp(sent),
                    _stamp(sent),
                )
            )
            candidates.append((i, decision, at, sender, company))
    return message_rows, reply_rows, candidates


def _leads(rng: random.Random, candidates: list[Candidate], leads: int) -> tuple[Rows, Rows, Rows]:
    """Lead rows in every status of the workflow, their message links, and some notes."""
    lead_rows: Rows = []
    link_rows: Rows = []
    note_rows: Rows = []
    chosen = rng.sample(candidates, min(leads, len(candidates)))
    for lead_id, (row, decision, at, sender, company) in enumerate(chosen, start=1):
        hot = decision == "sales"
        status = _pick(rng, STATUS_SHARES) if hot else rng.choice(("new", "contacted", "dismissed"))
        owner = rng.choice(STAFF) if status != "new" else ""
        claimed = at + timedelta(hours=rng.uniform(0.1, 6)) if status != "new" else None
        contacted = (
            claimed + timedelta(hours=rng.uniform(0.1, 20))
            if claimed and status in ("contacted", "won", "lost")
            else None
        )
        closed = (
            (contacted or claimed or at) + timedelta(days=rng.uniform(1, 10))
            if status in ("won", "lost", "dismissed")
            else None
        )
        updated = max(t for t in (at, claimed, contacted, closed) if t is not None)
        first, last = rng.choice(("Jane", "Ali", "Mei", "Olu", "Sven")), f"Lead{lead_id}"
        lead_rows.append(
            (
                lead_id,
                "hot" if hot else "nurture",
                status,
                sender,
                f"{first} {last}",
                company,
                f"+49 30 {rng.randint(100000, 999999)}",
                sender.partition("@")[2],
                decision,
                rng.uniform(0.75, 0.99),
                json.dumps(rng.sample(TERMS[decision], 2)),
                owner,
                _stamp(at + timedelta(hours=4)) if hot else None,
                _stamp(at),
                _stamp(updated),
                _stamp(claimed) if claimed else None,
                _stamp(contacted) if contacted else None,
                _stamp(closed) if closed else None,
            )
        )
        link_rows.append((lead_id, row))
        if status != "new" and rng.random() < 0.5:
            note_rows.append(
                (lead_id, owner, "Called; they want a quote by Friday.", _stamp(updated))
            )
    return lead_rows, link_rows, note_rows


def fill(path: Path, leads: int, messages: int, days: int = DAYS, seed: int = SEED) -> Filled:
    """A new store at `path` with `messages` decided messages over `days` days and `leads`
    leads on sales and marketing messages (one transaction)."""
    from triage.store.db import Database

    started = time.perf_counter()
    rng = random.Random(seed)
    now = datetime.now(UTC)
    message_rows, reply_rows, candidates = _messages(rng, now, messages, days)
    lead_rows, link_rows, note_rows = _leads(rng, candidates, leads)
    db = Database(path)
    with db.transaction() as c:
        c.executemany(
            "INSERT INTO messages (id, account, folder, uidvalidity, uid, message_id, state,"
            " sender, subject, language, body, label, confidence, decision, probabilities,"
            " explanation, may_reply, reasons, reviewed_label, reviewed_by, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " ?)",
            message_rows,
        )
        c.executemany(
            "INSERT INTO replies (message_row, reply_message_id, recipient, recipient_key,"
            " recipient_domain, envelope_from, template, mode, state, raw, next_attempt,"
            " created_at, claimed_at, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            reply_rows,
        )
        c.executemany(
            "INSERT INTO leads (id, kind, status, email, name, company, phone, website, label,"
            " confidence, explanation, owner, due_at, created_at, updated_at, claimed_at,"
            " contacted_at, closed_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            lead_rows,
        )
        c.executemany("INSERT INTO lead_messages (lead_id, message_row) VALUES (?, ?)", link_rows)
        c.executemany(
            "INSERT INTO lead_notes (lead_id, author, text, created_at) VALUES (?, ?, ?, ?)",
            note_rows,
        )
        c.execute(
            "INSERT INTO mailbox_state (account, folder, uidvalidity, last_uid, baseline_uid,"
            " first_seen, last_sync) VALUES ('default', 'INBOX', 1, ?, 0, ?, ?)",
            (messages, _stamp(now - timedelta(days=days)), _stamp(now)),
        )
    db.reads.execute("ANALYZE")
    db.close()
    return Filled(
        messages=len(message_rows),
        leads=len(lead_rows),
        replies=len(reply_rows),
        seconds=time.perf_counter() - started,
        lead_ids=[row[0] for row in lead_rows],
    )


# -- the console process --------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(base: Path, store: Path) -> Path:
    """The smallest configuration for `triage web` over `store`. The [imap] section is required
    by the settings; the console never connects to it."""
    path = base / "console.toml"
    path.write_text(
        '[imap]\nhost = "127.0.0.1"\nusername = "nobody"\npassword = "unused"\n\n'
        f'[store]\npath = "{store}"\n\n[daemon]\nhealth_port = 0\n'
    )
    return path


def triage_command() -> list[str]:
    """This checkout's triage (`python -m triage` with the repository first on the path): the
    console measured is the code beside the benchmark, not another installed copy."""
    return [sys.executable, "-m", "triage"]


def triage_env() -> dict[str, str]:
    """The environment for `triage_command`."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO)}


class ConsoleProcess:
    """`triage web` as a child process on `port`."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it; the seconds until it answers /login."""
        started = time.perf_counter()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *triage_command(),
                    "--config",
                    str(self.config),
                    "web",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=triage_env(),
            )
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"triage web exited {self.proc.returncode}; see {self.log}")
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/login")
                if conn.getresponse().status == 200:
                    conn.close()
                    return time.perf_counter() - started
            if time.perf_counter() - started > READY_TIMEOUT:
                raise RuntimeError(f"triage web not ready in {READY_TIMEOUT:g} s; see {self.log}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> ConsoleProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def add_user(config: Path, base: Path) -> None:
    """An admin USER with PASSWORD, added with the real command."""
    secret = base / "password"
    secret.write_text(PASSWORD)
    secret.chmod(0o600)
    done = subprocess.run(
        [
            *triage_command(),
            "--config",
            str(config),
            "users",
            "add",
            USER,
            "--role",
            "admin",
            "--password-file",
            str(secret),
        ],
        check=False,
        capture_output=True,
        text=True,
        env=triage_env(),
    )
    if done.returncode:
        raise RuntimeError(f"triage users add failed: {done.stderr.strip()}")


_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """One keep-alive connection with the session's cookies, like one person's browser tab."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookies: dict[str, str] = {}

    def request(
        self, method: str, path: str, body: str | None = None
    ) -> tuple[int, Mapping[str, str], str]:
        """(status, headers, text) of one request, keeping the cookies it sets."""
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closed an idle keep-alive connection (uvicorn after 5 s), as it may:
            # a browser opens a new one, and so does this.
            self.conn.close()
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
        text = response.read().decode("utf-8", "replace")
        for key, value in response.getheaders():
            if key.lower() == "set-cookie":
                name, _, rest = value.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0].strip('"')
        return response.status, dict(response.getheaders()), text

    def login(self, user: str, password: str) -> None:
        """Log in through the form, as a person does."""
        status, _h, page = self.request("GET", "/login")
        found = _TOKEN.search(page)
        if status != 200 or not found:
            raise RuntimeError(f"no login form (HTTP {status})")
        form = urlencode({"username": user, "password": password, "csrf_token": found.group(1)})
        status, _h, _text = self.request("POST", "/login", form)
        if status != 303:
            raise RuntimeError(f"login refused (HTTP {status})")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


# -- measuring ------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile by nearest rank; inf when there are none."""
    if not values:
        return float("inf")
    ordered = sorted(values)
    rank = max(1, round(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class PageTimes:
    """Milliseconds per request of one page."""

    name: str
    path: str
    ms: tuple[float, ...]
    failures: int

    @property
    def p50(self) -> float:
        """Median milliseconds."""
        return percentile(self.ms, 50)

    @property
    def p95(self) -> float:
        """95th percentile milliseconds."""
        return percentile(self.ms, 95)


def measure(
    browser: Browser,
    pages: Mapping[str, str],
    requests: int,
    lead_ids: Sequence[int],
    seed: int = SEED,
) -> list[PageTimes]:
    """`requests` GETs of each page, interleaved (one of each in turn), timed on the client."""
    rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in pages}
    failures = dict.fromkeys(pages, 0)
    for path in pages.values():  # one warm-up each: templates compiled, pages cached
        browser.request("GET", path.replace("{lead}", str(lead_ids[0] if lead_ids else 1)))
    for _ in range(requests):
        for name, path in pages.items():
            target = path.replace("{lead}", str(rng.choice(lead_ids) if lead_ids else 1))
            started = time.perf_counter()
            status, _h, _text = browser.request("GET", target)
            elapsed = (time.perf_counter() - started) * 1000
            if status == 200:
                times[name].append(elapsed)
            else:
                failures[name] += 1
    return [PageTimes(name, pages[name], tuple(times[name]), failures[name]) for name in pages]


@dataclass(frozen=True)
class ConsoleResult:
    """The console's page times over a filled store."""

    filled: Filled
    ready_s: float
    pages: list[PageTimes]
    backlog: dict[str, Any] | None = None

    def figures(self) -> dict[str, Any]:
        """Every figure under a stable name."""
        out: dict[str, Any] = {
            "console_leads": self.filled.leads,
            "console_messages": self.filled.messages,
            "console_fill_s": self.filled.seconds,
            "console_ready_s": self.ready_s,
        }
        for page in self.pages:
            out[f"console_{page.name}_p50_ms"] = page.p50
            out[f"console_{page.name}_p95_ms"] = page.p95
            out[f"console_{page.name}_max_ms"] = max(page.ms, default=float("inf"))
            out[f"console_{page.name}_requests"] = len(page.ms)
            out[f"console_{page.name}_failures"] = page.failures
        out["console_met"] = all(p.failures == 0 and p.p95 <= GOAL_P95_MS for p in self.pages)
        if self.backlog is not None:
            out["console_during_backlog"] = self.backlog
        return out

    def summary(self) -> str:
        """One line for a person."""
        parts = [
            f"{p.name} p50 {p.p50:.1f} ms p95 {p.p95:.1f} ms"
            + (f" ({p.failures} failed)" if p.failures else "")
            for p in self.pages
        ]
        during = " during a backlog" if self.backlog is not None else ""
        return (
            f"console with {self.filled.leads:,} leads, {self.filled.messages:,} messages{during}:"
            f" {' · '.join(parts)} (goal p95 ≤ {GOAL_P95_MS:g} ms)"
        )


@contextlib.contextmanager
def backlog_running(size: int, work: Path) -> Iterator[dict[str, Any]]:
    """`bench.backlog` with `size` messages in a thread for the duration of the block; the dict
    yielded gets its figures (or its error), and whether it was still running when the block
    ended."""
    from bench import backlog, startup

    found: dict[str, Any] = {"size": size}
    model = startup.ensure_model(work)

    def run() -> None:
        try:
            with startup.private_harness(work / "mail", {}) as harness:
                result = backlog.run(harness, work, model, size)
            found["backlog_msgs_per_s"] = result.triage.rate
            found["backlog_seconds"] = result.triage.seconds
        except Exception as exc:  # noqa: BLE001 - reported with the figures, not raised
            found["error"] = f"{type(exc).__name__}: {exc}"

    thread = threading.Thread(target=run, name="bench-backlog", daemon=True)
    thread.start()
    # The backlog starts with the mail servers and `triage run`: wait until messages arrive.
    store = work / "backlog-0" / "triage.db"
    deadline = time.monotonic() + 120
    while thread.is_alive() and time.monotonic() < deadline and not _seen_any(store):
        time.sleep(0.1)
    try:
        yield found
    finally:
        found["still_running_at_end"] = thread.is_alive()
        thread.join()


def _seen_any(store: Path) -> bool:
    import sqlite3

    if not store.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as conn:
            return bool(conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
    except sqlite3.Error:
        return False


def run(
    work: Path,
    leads: int,
    messages: int,
    requests: int,
    pages: Mapping[str, str] = DEFAULT_PAGES,
    backlog_size: int = 0,
) -> ConsoleResult:
    """Fill a store under `work`, start `triage web` over it, log in and time the pages."""
    work.mkdir(parents=True, exist_ok=True)
    store = work / "console" / "triage.db"
    store.parent.mkdir(parents=True, exist_ok=True)
    filled = fill(store, leads, messages)
    config = write_config(store.parent, store)
    add_user(config, store.parent)
    with ConsoleProcess(config, free_port(), store.parent / "web.log") as console:
        ready = console.start()
        browser = Browser(console.port)
        try:
            browser.login(USER, PASSWORD)
            if backlog_size:
                with backlog_running(backlog_size, work) as during:
                    times = measure(browser, pages, requests, filled.lead_ids)
                return ConsoleResult(filled, ready, times, during)
            times = measure(browser, pages, requests, filled.lead_ids)
        finally:
            browser.close()
    return ConsoleResult(filled, ready, times)


def parse_pages(values: Sequence[str]) -> dict[str, str]:
    """NAME=PATH options as a mapping; the default pages when none are given."""
    if not values:
        return dict(DEFAULT_PAGES)
    pages = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", name) or not path.startswith("/"):
            raise SystemExit(f"--page {value!r}: give NAME=PATH, e.g. queue=/leads")
        pages[name] = path
    return pages


def main(argv: Sequence[str] | None = None) -> int:
    """Print the one-line summary (and the figures as JSON with --json)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.console",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200, help="requests per page (200)")
    parser.add_argument("--page", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument(
        "--with-backlog", type=int, default=0, metavar="N", help="measure during bench.backlog"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep the store")
    args = parser.parse_args(argv)
    pages = parse_pages(args.page)
    with contextlib.ExitStack() as stack:
        work = args.keep or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="triage-bench-"))
        )
        result = run(work, args.leads, args.messages, args.requests, pages, args.with_backlog)
    print(result.summary())
    if args.json is not None:
        args.json.write_text(json.dumps(result.figures(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
