"""Push latency: an inquiry submitted to Postfix until triage's reply is in the sender's INBOX.

`triage run` watches hello@ with IDLE and sends live replies. Each of N senders (harness users
p00, p01, …: distinct, so the one-reply-per-sender rule never suppresses a reply) submits one
sales inquiry over SMTP; the clock runs from just before the SMTP submission until a NOOP on the
sender's own IMAP connection shows the reply (NOOP sees new mail within a millisecond, so the
polling adds at most the poll interval). One message at a time, so every figure is a cold,
single-message path: Postfix → LMTP → Dovecot → IDLE notification (Dovecot waits a fixed
~0.5 s) → triage fetch, parse, classify, record → SMTP → Postfix → LMTP → the sender's Maildir.

    python -m bench.latency --count 50
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from email.message import EmailMessage
from email.utils import format_datetime, localtime, make_msgid
from pathlib import Path

from imapclient import IMAPClient

from bench.startup import TriageProcess, ensure_model, make_setup, private_harness, prospects
from devtools.mailharness import MailHarness

POLL_S = 0.002
REPLY_TIMEOUT_S = 20.0
# Between one reply and the next inquiry: a random pause of up to this long (fixed seed), so some
# inquiries arrive while triage is still finishing the previous pass (filing the reply in Sent,
# the corrections scan) and others once it is back in IDLE, as with mail that trickles in.
MAX_GAP_S = 0.3
SEED = 7

BODY = (
    "Hello,\n\nwe would like a quote for {n} office chairs and {m} desks, delivered to our new"
    " office in Lyon by the end of next month. Our budget is approved and we are ready to order;"
    " could you call me to discuss pricing, volume discounts and delivery?\n\n"
    "Best regards,\n{name}\nHead of Purchasing\nExample Client SA\n+33 4 72 00 00 {n:02d}\n"
)


def inquiry(sender: str, to: str, n: int) -> bytes:
    """A plain, unambiguous sales inquiry from `sender` (the bench measures delivery, not
    the model's judgement)."""
    name = sender.partition("@")[0].upper()
    msg = EmailMessage()
    msg["From"] = f"{name} Buyer <{sender}>"
    msg["To"] = to
    msg["Subject"] = f"Quote for {n} office chairs"
    msg["Date"] = format_datetime(localtime())
    msg["Message-ID"] = make_msgid(f"lat{n}", domain="bench.example.test")
    msg.set_content(BODY.format(n=n, m=n // 2 + 1, name=name))
    return msg.as_bytes()


@dataclass(frozen=True)
class LatencyResult:
    """Seconds from submission to reply, one per message that got its reply in time."""

    seconds: tuple[float, ...]
    sent: int

    @property
    def replied(self) -> int:
        """How many replies arrived within the timeout."""
        return len(self.seconds)

    def percentile(self, p: float) -> float:
        """The p-th percentile (nearest rank) of the latencies; inf when none arrived."""
        if not self.seconds:
            return float("inf")
        ordered = sorted(self.seconds)
        rank = max(1, round(p / 100 * len(ordered)))
        return ordered[min(rank, len(ordered)) - 1]

    @property
    def p50(self) -> float:
        """The median latency."""
        return self.percentile(50)

    @property
    def p95(self) -> float:
        """The 95th percentile latency."""
        return self.percentile(95)

    @property
    def mean(self) -> float:
        """The mean latency."""
        return statistics.fmean(self.seconds) if self.seconds else float("inf")


def _one(harness: MailHarness, user: str, to: str, n: int) -> float | None:
    """Submit one inquiry from `user`; seconds until the reply is visible, None on timeout."""
    client = IMAPClient(harness.config.host, port=harness.config.imap_port, ssl=False, timeout=30)
    try:
        client.login(user, harness.password(user))
        client.select_folder("INBOX")
        before = len(client.search("ALL"))
        raw = inquiry(harness.address(user), to, n)
        started = time.perf_counter()
        harness.send(raw, harness.address(user), to)
        while time.perf_counter() - started < REPLY_TIMEOUT_S:
            client.noop()
            if len(client.search("ALL")) > before:
                return time.perf_counter() - started
            time.sleep(POLL_S)
        return None
    finally:
        client.logout()


def run(
    harness: MailHarness, work: Path, model: Path, count: int, workers: int = 0
) -> LatencyResult:
    """Measure `count` inquiries from p00… (the harness must have those users)."""
    users = list(prospects(count))
    for user in ("hello", *users):
        harness.clear_mailbox(user)
    hello = harness.address("hello")
    extra = f"\n[ingest]\nworkers = {workers}\n"
    setup = make_setup(harness, work / f"latency-{workers}", model, "live", extra)
    # Every prospect is on example.test: the default cap of replies per domain and hour would
    # defer all but the first few, and the run would measure the cap instead of the service.
    caps = {
        "TRIAGE_REPLIES__MAX_PER_HOUR": str(10 * count),
        "TRIAGE_REPLIES__MAX_PER_DOMAIN_PER_HOUR": str(10 * count),
    }
    setup = replace(setup, env={**setup.env, **caps})
    gaps = random.Random(SEED)
    latencies: list[float] = []
    with TriageProcess(setup) as proc:
        proc.start()
        time.sleep(1.0)  # let the first pass finish and IDLE begin
        for n, user in enumerate(users):
            seconds = _one(harness, user, hello, n)
            if seconds is not None:
                latencies.append(seconds)
            time.sleep(gaps.uniform(0.0, MAX_GAP_S))
    return LatencyResult(tuple(latencies), count)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the latency measurement alone and print its figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--workers", type=int, default=0, help="ingest.workers for triage")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="triage-bench-") as tmp:
        work = Path(tmp)
        model = ensure_model(work)
        with private_harness(work / "mail", prospects(args.count)) as harness:
            r = run(harness, work, model, args.count, args.workers)
    print(
        f"{r.replied}/{r.sent} replies; p50 {r.p50:.3f} s, p95 {r.p95:.3f} s, "
        f"max {max(r.seconds, default=float('inf')):.3f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
