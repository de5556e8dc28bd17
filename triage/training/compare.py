"""The guarded half of the learning loop: compare a candidate model with the live one, and
promote it only when it does no harm.

`triage train --with-corrections` writes a candidate beside the live model
(`<stem>.candidate.skops` and its card). `compare` runs both models over
- the blind sets (`triage.training.blind`): per set macro-F1, hot leads lost (sales mail neither
  decided sales nor sent to review), review rate, and the share of `other` mail answered;
- the mail the model decided in the last weeks (not what a header rule decided: no model changes
  that), rebuilt from what the ledger kept (subject, body, sender, language): the decision
  counts, every message whose decision would change, and how many would newly get an automatic
  reply (decided into a label with a reply template from other or review) or stop getting one.

`promote` refuses a candidate that is worse on any blind set by any of those figures, or that
would newly answer more of the stored mail than it stops answering (the simple rule: a model that
learned from corrections should not, on balance, send more automatic replies to the same mail).
Otherwise it keeps the live pair as `<stem>.previous.*` and renames the candidate into place,
card first, as `triage train` does; the daemon reloads a changed model file by itself.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from triage.core.errors import ConfigError, ModelError
from triage.core.labels import LABEL_TABLE
from triage.core.models import DECISIONS, Address, InboundMessage
from triage.core.settings import StoreSettings
from triage.decide.classify import (
    Classifier,
    card_path,
    is_installed_file,
    load_classifier,
    read_card,
    rule_decided,
)
from triage.store.decided import DecidedMessage, decided_since
from triage.training import blind

CANDIDATE = "candidate"
PREVIOUS = "previous"
DEFAULT_WEEKS = 4
# Decisions that send an automatic reply: the labels the label table answers with a template.
AUTO_REPLY = frozenset(label for label, row in LABEL_TABLE.items() if row.reply_template)


def sibling(model_path: Path, role: str) -> Path:
    """The model file beside `model_path` in `role`: `model.skops` → `model.candidate.skops`
    (its card, by `card_path`, is `model.candidate-card.json`)."""
    return model_path.with_name(f"{model_path.stem}.{role}{model_path.suffix}")


def candidate_path(model_path: Path) -> Path:
    """Where `triage train --with-corrections` writes the candidate of live model `model_path`."""
    return sibling(model_path, CANDIDATE)


def previous_path(model_path: Path) -> Path:
    """Where `promote` keeps the replaced live model, for rollback."""
    return sibling(model_path, PREVIOUS)


@dataclass(frozen=True)
class BlindResult:
    """One blind set's figures for the live model and the candidate."""

    name: str
    size: int
    live: dict[str, Any]
    candidate: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Flip:
    """A stored message whose decision the candidate would change."""

    row_id: int
    subject: str
    live: str
    candidate: str


@dataclass(frozen=True)
class ModelComparison:
    """Everything `triage model compare` shows, and what `promote` decides on."""

    live_version: str
    candidate_version: str
    weeks: int
    blind: tuple[BlindResult, ...] = ()
    notes: tuple[str, ...] = ()
    stored: int = 0
    rule_decided: int = 0  # stored messages a header rule decided: left out
    live_counts: dict[str, int] = field(default_factory=dict)
    candidate_counts: dict[str, int] = field(default_factory=dict)
    flips: tuple[Flip, ...] = ()

    @property
    def newly_auto_replied(self) -> int:
        """Stored messages the candidate would answer automatically and the live model not."""
        return sum(1 for f in self.flips if f.candidate in AUTO_REPLY and f.live not in AUTO_REPLY)

    @property
    def no_longer_auto_replied(self) -> int:
        """Stored messages the live model answers automatically and the candidate would not."""
        return sum(1 for f in self.flips if f.live in AUTO_REPLY and f.candidate not in AUTO_REPLY)

    def refusals(self, *, require_blind: bool = True) -> list[str]:
        """Why the candidate must not replace the live model (empty: it may). Without a blind
        set the main guard is missing: a refusal too, unless `require_blind` is false."""
        found = []
        if not self.blind and require_blind:
            why = "; ".join(self.notes) or "none found"
            found.append(
                f"no blind set to compare on ({why}); give --without-blind to promote on the "
                "stored-mail rule alone"
            )
        for r in self.blind:
            if _num(r.candidate["macro_f1"]) < _num(r.live["macro_f1"]):
                found.append(
                    f"lower macro-F1 on blind set {r.name} "
                    f"({_pct(r.candidate['macro_f1'])} < {_pct(r.live['macro_f1'])})"
                )
            if _num(r.candidate["sales_missed"]) > _num(r.live["sales_missed"]):
                found.append(
                    f"more hot leads lost on blind set {r.name} "
                    f"({_pct(r.candidate['sales_missed'])} > {_pct(r.live['sales_missed'])})"
                )
            live_other = r.live["other_auto_reply_rate"]
            cand_other = r.candidate["other_auto_reply_rate"]
            if _num(cand_other) > _num(live_other):
                found.append(
                    f"more `other` mail answered on blind set {r.name} "
                    f"({_pct(cand_other)} > {_pct(live_other)})"
                )
        if self.newly_auto_replied > self.no_longer_auto_replied:
            found.append(
                f"it would newly auto-reply to {self.newly_auto_replied} stored messages and "
                f"stop for only {self.no_longer_auto_replied}"
            )
        return found

    def as_dict(self) -> dict[str, Any]:
        """Plain data for `--json` (no message text besides the subjects of flipped messages)."""
        keys = ("macro_f1", "sales_missed", "review_rate", "other_auto_reply_rate")
        return {
            "live": self.live_version,
            "candidate": self.candidate_version,
            "weeks": self.weeks,
            "notes": list(self.notes),
            "blind": [
                {
                    "set": r.name,
                    "messages": r.size,
                    "live": {k: r.live[k] for k in keys},
                    "candidate": {k: r.candidate[k] for k in keys},
                }
                for r in self.blind
            ],
            "stored": {
                "messages": self.stored,
                "rule_decided": self.rule_decided,
                "live": self.live_counts,
                "candidate": self.candidate_counts,
                "changed": [
                    {"id": f.row_id, "subject": f.subject, "live": f.live, "candidate": f.candidate}
                    for f in self.flips
                ],
                "newly_auto_replied": self.newly_auto_replied,
                "no_longer_auto_replied": self.no_longer_auto_replied,
            },
            "refusals": self.refusals(),
        }


def _num(value: float | None) -> float:
    return value or 0.0


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def rebuild(stored: DecidedMessage) -> InboundMessage:
    """A message as the classifier sees it, from what the ledger kept of it."""
    return InboundMessage(
        message_id=stored.message_id,
        subject=stored.subject,
        from_=Address("", stored.sender) if stored.sender else None,
        text=stored.body,
        new_text=stored.body,
        language=stored.language,
    )


def _counts(decisions: Sequence[str]) -> dict[str, int]:
    counted = Counter(decisions)
    return {d: counted.get(d, 0) for d in DECISIONS}


def compare_models(
    live: Classifier,
    candidate: Classifier,
    stored: Sequence[DecidedMessage],
    blind_sets: Sequence[blind.BlindSet],
    *,
    weeks: int = DEFAULT_WEEKS,
    notes: Sequence[str] = (),
) -> ModelComparison:
    """Run both models over the blind sets and the stored mail (see the module's docstring)."""
    results = [
        BlindResult(b.name, len(b.corpus), blind.score(live, b), blind.score(candidate, b))
        for b in blind_sets
    ]
    # Mail a header rule decided is decided the same way whatever the model says (and its body
    # was never read): only the mail the model decided can flip. The stored mail has no headers
    # left, so the rest is run through the models alone.
    by_model = [m for m in stored if not rule_decided(m.reasons)]
    left_out = len(stored) - len(by_model)
    stored = by_model
    messages = [rebuild(m) for m in stored]
    before = [r.decision for r in live.classify_many(messages, rules=False, explain=False)]
    after = [r.decision for r in candidate.classify_many(messages, rules=False, explain=False)]
    flips = tuple(
        Flip(m.row_id, m.subject, old, new)
        for m, old, new in zip(stored, before, after, strict=True)
        if old != new
    )
    return ModelComparison(
        live_version=live.version,
        candidate_version=candidate.version,
        weeks=weeks,
        blind=tuple(results),
        notes=tuple(notes),
        stored=len(stored),
        rule_decided=left_out,
        live_counts=_counts(before),
        candidate_counts=_counts(after),
        flips=flips,
    )


def load_blind_sets() -> tuple[list[blind.BlindSet], list[str]]:
    """The frozen blind sets, or none and a note saying why they are left out."""
    root = blind.resolve_blind_dir(None)
    try:
        return blind.load_blind(root), []
    except ConfigError as exc:
        return [], [f"blind sets left out: {exc}"]


def compare(
    live_path: Path,
    candidate: Path,
    store: StoreSettings | Path,
    *,
    weeks: int = DEFAULT_WEEKS,
    thresholds: Mapping[str, float] | None = None,
    spam_headers: Sequence[str] = (),
    now: datetime | None = None,
) -> ModelComparison:
    """Load both models (with the operator's thresholds, if any) and compare them over the blind
    sets and the mail stored in the last `weeks` weeks; ModelError when one cannot be loaded."""
    if not candidate.is_file():
        raise ModelError(
            f"no candidate model {candidate}; write one with `triage train --with-corrections`"
        )
    live = load_classifier(live_path, thresholds)
    new = load_classifier(candidate, thresholds)
    live.spam_headers = new.spam_headers = tuple(spam_headers)
    sets, notes = load_blind_sets()
    stored: list[DecidedMessage] = []
    path = store if isinstance(store, Path) else None if store.is_postgresql else store.path
    if path is None or path.is_file():
        try:
            since = (now or datetime.now(UTC)) - timedelta(weeks=weeks)
        except OverflowError:
            raise ConfigError(f"{weeks} weeks reach back before the year 1") from None
        stored = decided_since(store, since)
    else:
        notes.append(f"no store at {path}: no stored mail compared")
    return compare_models(live, new, stored, sets, weeks=weeks, notes=notes)


@dataclass(frozen=True)
class Promotion:
    """What `promote` did: the new live model and where the previous one is kept."""

    live: Path
    previous: Path | None
    version: str


def _write_into_place(target: Path, data: bytes) -> None:
    """Write `data` to `target` by a temporary file and a rename, so a reader sees the old file
    or the new one, never half of one."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    # The daemon refuses model files others can write, whatever umask this runs with.
    tmp.chmod(stat.S_IMODE(tmp.stat().st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))
    os.replace(tmp, target)


def _install(live_path: Path, source: Path) -> tuple[Path | None, str]:
    """Put the pair `source` (model and card) in place of the live pair, keeping the live pair
    as `<stem>.previous.*`; returns (the kept previous model or None, the new version).

    Everything is read before anything is written, so `source` may be the previous pair itself
    (a rollback swaps the two).
    """
    if is_installed_file(live_path):
        raise ModelError(
            f"{live_path} is the model installed with triage; set classifier.model_path to a "
            "model of your own (triage train --output PATH) and promote into that"
        )
    load_classifier(source)  # refuses a model whose card, hash or types do not fit
    card = read_card(source)
    model_bytes = source.read_bytes()
    old: tuple[bytes, bytes] | None = None
    if live_path.is_file() and card_path(live_path).is_file():
        old = (live_path.read_bytes(), card_path(live_path).read_bytes())
    previous = None
    if old is not None:
        previous = previous_path(live_path)
        _write_into_place(card_path(previous), old[1])
        _write_into_place(previous, old[0])
    live_card = replace(card, model_file=live_path.name)
    # Card first, then the model, as `triage train` writes them: the daemon retries a load that
    # falls between the two renames.
    _write_into_place(card_path(live_path), live_card.to_json().encode())
    _write_into_place(live_path, model_bytes)
    return previous, card.version


def promote(live_path: Path, candidate: Path) -> Promotion:
    """Replace the live model and its card by the candidate's; keep the live pair as
    `<stem>.previous.*`; remove the candidate. The caller has compared them (`refusals`).

    ModelError for the model installed with triage (a package upgrade would replace it) and for
    a candidate that does not load, or that is the live or the previous model itself (it would
    be removed after being put in place).
    """
    if candidate.resolve() in (live_path.resolve(), previous_path(live_path).resolve()):
        raise ModelError(f"{candidate} is the live or the previous model, not a candidate")
    previous, version = _install(live_path, candidate)
    candidate.unlink()
    card_path(candidate).unlink(missing_ok=True)
    return Promotion(live_path, previous, version)


def rollback(live_path: Path) -> Promotion:
    """Swap the live pair and the `<stem>.previous.*` pair kept by `promote` (again: undo)."""
    previous = previous_path(live_path)
    if not previous.is_file():
        raise ModelError(f"no previous model {previous} to roll back to")
    kept, version = _install(live_path, previous)
    return Promotion(live_path, kept, version)
