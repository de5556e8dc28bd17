"""The blind evaluation sets: mail the model is measured on and never trained on.

`classifiers/blind/` holds a messy set (`messy/`: real-inbox shapes, web forms, many languages)
and two tidy ones (`tidy/`, `tidy2/`), each folder with a `labels.csv` of
`file,label,language,shape`. A `FROZEN` file at the top records the SHA-256 of every labels file
and message: evaluating checks it, so a set edited after it was frozen is refused instead of
quietly measured, and training refuses any corpus or folder that contains a frozen set
(`refuse_frozen`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triage.core.errors import ConfigError
from triage.core.models import Label
from triage.training.corpus import LABELS_FILE, Corpus, Example, as_label, example
from triage.training.learn import report

if TYPE_CHECKING:
    from triage.decide.classify import Classifier

FROZEN_FILE = "FROZEN"
DEFAULT_BLIND = Path("classifiers/blind")
# The sub-folders, each reported on its own. `tidy2` is a second tidy set, written and frozen
# after the first two had been looked at three times (see classifiers/blind/README.md).
SETS = ("messy", "tidy", "tidy2")


@dataclass(frozen=True)
class BlindSet:
    """One blind set: its labelled examples and each example's language."""

    name: str
    corpus: Corpus
    languages: tuple[str, ...]


def resolve_blind_dir(path: Path | None) -> Path:
    """The blind sets' directory: `path`, else `classifiers/blind` here or in the repository."""
    if path is not None:
        return path
    if DEFAULT_BLIND.is_dir():
        return DEFAULT_BLIND
    in_repository = Path(__file__).resolve().parents[2] / DEFAULT_BLIND
    return in_repository if in_repository.is_dir() else DEFAULT_BLIND


def fingerprint(root: Path) -> str:
    """SHA-256 over every labels file and message below `root` (names and bytes, in order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".eml", ".csv")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError as exc:
            raise ConfigError(f"{path} cannot be read: {exc.strerror}") from None
    return digest.hexdigest()


def freeze(root: Path, date: str) -> dict[str, Any]:
    """Write `FROZEN` for the sets below `root` as they are now (done once, when frozen)."""
    record = {"frozen": date, "sha256": fingerprint(root)}
    (root / FROZEN_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def load_blind(root: Path) -> list[BlindSet]:
    """The blind sets below `root`, checked against `FROZEN`; ConfigError says what is wrong."""
    frozen_file = root / FROZEN_FILE
    if not frozen_file.is_file():
        raise ConfigError(f"{root} is no frozen blind set (no {FROZEN_FILE} file)")
    try:
        record = json.loads(frozen_file.read_text(encoding="utf-8"))
        expected = str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{frozen_file} cannot be read: {exc}") from None
    if fingerprint(root) != expected:
        raise ConfigError(
            f"{root} changed after it was frozen on {record.get('frozen', '?')}: a blind set is "
            "never edited (add a new, dated set instead)"
        )
    sets = []
    for name in SETS:
        folder = root / name
        if folder.is_dir():
            sets.append(_load_set(name, folder))
    if not sets:
        raise ConfigError(f"{root} holds none of the sets {', '.join(SETS)}")
    return sets


def _load_set(name: str, folder: Path) -> BlindSet:
    examples: list[Example] = []
    languages: list[str] = []
    for labels_file in sorted(folder.rglob(LABELS_FILE)):
        for row in _rows(labels_file):
            where = f"{labels_file}:{row.get('file', '')}"
            label: Label = as_label(row.get("label") or "", where)
            path = labels_file.parent / (row.get("file") or "")
            # Only .eml files below the set count in its fingerprint: any other file could
            # change after the set was frozen without anyone noticing.
            if path.suffix != ".eml" or not path.resolve().is_relative_to(folder.resolve()):
                raise ConfigError(f"{where}: not a .eml file inside the set (outside FROZEN)")
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{where}: cannot be read: {exc.strerror}") from None
            examples.append(example(path.relative_to(folder).as_posix(), label, raw))
            languages.append((row.get("language") or "").strip() or "?")
    return BlindSet(name, Corpus(tuple(examples)), tuple(languages))


def _rows(labels_file: Path) -> list[dict[str, str]]:
    try:
        with labels_file.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{labels_file} cannot be read: {exc}") from None


def score(classifier: Classifier, blind_set: BlindSet) -> dict[str, Any]:
    """How `classifier` (header rules on, as the daemon runs it) does on `blind_set`: the
    figures of `learn.report`, how many a header rule decided, and per language."""
    data = blind_set.corpus
    decided = classifier.classify_many(data.messages, rules=True, explain=False)
    decisions = [r.decision for r in decided]
    result = report(data.labels, [r.label for r in decided], decisions)
    result["rule_decided"] = sum(1 for r in decided if r.rule is not None)
    result["by_language"] = by_language(blind_set.languages, data.labels, decisions)
    return result


def refuse_frozen(path: Path) -> None:
    """ConfigError when `path` is, contains or lies inside a frozen blind set."""
    resolved = path.resolve()
    for folder in (resolved, *resolved.parents):
        if (folder / FROZEN_FILE).is_file():
            raise ConfigError(
                f"{path} is part of a frozen blind evaluation set ({folder}): never train on it"
            )
    if resolved.is_dir() and any(resolved.rglob(FROZEN_FILE)):
        raise ConfigError(f"{path} contains a frozen blind evaluation set: never train on it")


def by_language(
    languages: Sequence[str], truth: Sequence[str], decided: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per language: messages, accuracy of the decision (review counts as wrong), hot leads lost
    (a sales message decided marketing or other), review rate, `other` mail answered."""
    out: dict[str, dict[str, Any]] = {}
    for language in sorted(set(languages)):
        rows = [
            (t, d) for lang, t, d in zip(languages, truth, decided, strict=True) if lang == language
        ]
        sales = [d for t, d in rows if t == "sales"]
        other = [d for t, d in rows if t == "other"]
        out[language] = {
            "messages": len(rows),
            "correct": _share(sum(t == d for t, d in rows), len(rows)),
            "hot_leads_lost": _share(sum(d in ("marketing", "other") for d in sales), len(sales)),
            "review_rate": _share(sum(d == "review" for _t, d in rows), len(rows)),
            "other_answered": _share(sum(d in ("sales", "marketing") for d in other), len(other)),
        }
    return out


def _share(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None
