"""Labelled mail for training and evaluation: the corpus, extra folders, and people's corrections.

A corpus directory holds `.eml` files and one or more `labels.csv` files (`file,label`), anywhere
below it; each `file` is relative to the `labels.csv` that names it. (The shipped corpus is written
in batch folders with one `labels.csv` each and later merged into one at the top; both layouts and
the transition between them load the same examples.) Extra folders (`DIR:LABEL`) give every
message in a directory, mbox or Maildir one label. Corrections are the labels people gave in the
store's `corrections` table; they replace a corpus example with the same Message-ID.

Examples are kept in a fixed order (sorted by source) so that the same files train the same model.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from triage.core.errors import ConfigError
from triage.core.models import LABELS, InboundMessage, Label
from triage.core.settings import StoreSettings
from triage.ingest.sources import iter_sources
from triage.parsing import parse
from triage.store.corrections import StoredCorrection, read_corrections

LABELS_FILE = "labels.csv"
DEFAULT_CORPUS = Path("classifiers/corpus")
CORRECTION_PREFIX = "correction:"


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled message: where it came from, its label, the parsed message, a content hash."""

    source: str
    label: Label
    message: InboundMessage
    digest: str
    # How much the example counts when fitting: a person's correction of the company's own mail
    # outweighs a generic corpus message (see triage.store.corrections.CORRECTION_WEIGHTS).
    weight: float = 1.0


@dataclass(frozen=True)
class Corpus:
    """An ordered collection of labelled examples and the problems met while reading them.

    `problems` are one-line notes about files that were skipped (unreadable, unlabelled); a
    caller prints them, they never stop training.
    """

    examples: tuple[Example, ...] = ()
    problems: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def messages(self) -> list[InboundMessage]:
        """The messages, in order."""
        return [e.message for e in self.examples]

    @property
    def labels(self) -> list[Label]:
        """The labels, in order."""
        return [e.label for e in self.examples]

    @property
    def weights(self) -> list[float]:
        """The examples' sample weights, in order."""
        return [e.weight for e in self.examples]

    def counts(self) -> dict[str, int]:
        """How many examples each label has (every label listed, zeros included)."""
        counted = Counter(self.labels)
        return {label: counted.get(label, 0) for label in LABELS}

    def sha256(self) -> str:
        """A hash of the content and labels, independent of order and file names.

        SHA-256 over the sorted `<content sha256> <label>` lines: the same messages with the same
        labels give the same hash wherever they are stored.
        """
        lines = sorted(f"{e.digest} {e.label}\n" for e in self.examples)
        return hashlib.sha256("".join(lines).encode()).hexdigest()

    def __add__(self, other: Corpus) -> Corpus:
        return Corpus(self.examples + other.examples, self.problems + other.problems)

    def subset(self, indices: Iterable[int]) -> Corpus:
        """The examples at `indices`, in that order (problems are not carried over)."""
        return Corpus(tuple(self.examples[i] for i in indices))

    def with_corrections(self, corrections: Corpus) -> Corpus:
        """This corpus with `corrections` applied.

        A correction replaces every example with the same Message-ID (the person's label wins);
        the other corrections are added as new examples.
        """
        by_id = {message_key(c.message.message_id): c for c in corrections.examples}
        kept = tuple(e for e in self.examples if message_key(e.message.message_id) not in by_id)
        return Corpus(kept + corrections.examples, self.problems + corrections.problems)


def message_key(message_id: str) -> str:
    """A Message-ID in the form corrections are matched by: no brackets or spaces, lower case."""
    return message_id.strip().strip("<>").strip().lower()


def as_label(value: str, where: str) -> Label:
    """`value` as a label; `ConfigError` naming `where` when it is not one."""
    label = value.strip().lower()
    if label not in LABELS:
        raise ConfigError(f"{where}: unknown label {value!r} (expected one of {', '.join(LABELS)})")
    return label


def split_label(spec: str, default: Label | None = None) -> tuple[Path, Label]:
    """`DIR:LABEL` → (DIR, LABEL). Without a known `:LABEL` suffix, `default` (or an error).

    Only a suffix that is a label is split off, so paths that contain `:` still work.
    """
    head, sep, tail = spec.rpartition(":")
    label = tail.strip().lower()
    if sep and head and label in LABELS:
        return Path(head), label
    if default is None:
        raise ConfigError(f"{spec}: expected DIR:LABEL with LABEL one of {', '.join(LABELS)}")
    return Path(spec), default


def resolve_corpus_dir(path: Path | None) -> Path:
    """The corpus directory: `path`, else `classifiers/corpus` here or in the repository.

    An installed triage has no corpus (the wheel ships the model, not its training mail): then
    the answer is the relative default, and loading it says that it does not exist.
    """
    if path is not None:
        return path
    if DEFAULT_CORPUS.is_dir():
        return DEFAULT_CORPUS
    # The repository holding the `triage` package, so the command works from any directory.
    in_repository = Path(__file__).resolve().parents[2] / DEFAULT_CORPUS
    return in_repository if in_repository.is_dir() else DEFAULT_CORPUS


def example(source: str, label: Label, raw: bytes) -> Example:
    return Example(source, label, parse(raw), hashlib.sha256(raw).hexdigest())


def _read_labels(labels_file: Path) -> Iterator[tuple[int, Path, Label]]:
    """(line number, resolved file, label) for each row of one `labels.csv`."""
    try:
        with labels_file.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not {"file", "label"} <= set(reader.fieldnames):
                raise ConfigError(f"{labels_file}: expected a header line `file,label`")
            for row in reader:
                name = (row.get("file") or "").strip()
                if not name:
                    continue
                where = f"{labels_file}:{reader.line_num}"
                label = as_label(row.get("label") or "", where)
                yield reader.line_num, (labels_file.parent / name).resolve(), label
    except OSError as exc:
        raise ConfigError(f"{labels_file} cannot be read: {exc.strerror}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"{labels_file} is not a valid CSV file: {exc}") from None


def load_corpus(corpus_dir: Path) -> Corpus:
    """Every message named in a `labels.csv` below `corpus_dir`, with its label.

    A file named twice with the same label (batch lists and a merged list) counts once; with two
    different labels, or when a named file is missing, `ConfigError` says where.
    """
    if not corpus_dir.is_dir():
        raise ConfigError(f"corpus directory {corpus_dir} does not exist")
    root = corpus_dir.resolve()
    label_files = sorted(root.rglob(LABELS_FILE))
    if not label_files:
        raise ConfigError(f"corpus directory {corpus_dir} has no {LABELS_FILE}")
    labelled: dict[Path, tuple[Label, str]] = {}
    for labels_file in label_files:
        for line, path, label in _read_labels(labels_file):
            where = f"{labels_file.relative_to(root)}:{line}"
            previous = labelled.get(path)
            if previous is not None and previous[0] != label:
                raise ConfigError(
                    f"{corpus_dir}: {path.name} is labelled {previous[0]} ({previous[1]}) "
                    f"and {label} ({where})"
                )
            labelled.setdefault(path, (label, where))
    # A labels file may name a message anywhere ("../x.eml", a link): never one of a frozen
    # blind set, wherever it lies (checked once per folder).
    from triage.training.blind import refuse_frozen  # blind imports this module

    for folder in {path.parent for path in labelled}:
        refuse_frozen(folder)
    examples = []
    for path in sorted(labelled):
        label, where = labelled[path]
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{where}: {path.name} cannot be read: {exc.strerror}") from None
        examples.append(example(_relative(path, root), label, raw))
    unlabelled = sum(1 for p in root.rglob("*.eml") if p.resolve() not in labelled)
    problems = (f"{corpus_dir}: {unlabelled} .eml files are in no {LABELS_FILE}",)
    return Corpus(tuple(examples), problems if unlabelled else ())


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def load_folder(path: Path, label: Label, progress: Callable[[int], None] | None = None) -> Corpus:
    """Every message in `path` (an .eml file, a directory, an mbox or a Maildir), as `label`.

    Messages that cannot be read are skipped and listed in `problems`. `progress(n)` is called
    with the number of messages read so far, every 100 messages.
    """
    if not path.exists():
        raise ConfigError(f"{path} does not exist")
    examples = []
    problems = []
    for n, item in enumerate(iter_sources([path]), start=1):
        if progress is not None and n % 100 == 0:
            progress(n)
        if item.raw is None:
            problems.append(f"{item.path}: skipped: {item.error or 'unreadable'}")
            continue
        examples.append(example(str(item.path), label, item.raw))
    examples.sort(key=lambda e: e.source)
    return Corpus(tuple(examples), tuple(problems))


def load_corrections(store: StoreSettings | Path) -> Corpus:
    """The labels people gave (table `corrections`), latest per Message-ID, as examples.

    The store is opened read-only: training never changes it, and a running daemon may keep
    writing. A correction with the raw message is parsed; one without is rebuilt from its subject
    and body. Each example counts with the weight stored with its correction (by its source).
    `store` is a SQLite file's path or the store settings (a SQLite file, or PostgreSQL).
    """
    path = store if isinstance(store, Path) else None if store.is_postgresql else store.path
    if path is not None and not path.is_file():
        raise ConfigError(f"store {path} does not exist")
    latest: dict[str, StoredCorrection] = {}
    for correction in read_corrections(store):
        latest[message_key(correction.message_id)] = correction
    examples = []
    problems = []
    for key in sorted(latest):
        found = latest[key]
        message_id, new_label, subject, raw = (
            found.message_id,
            found.new_label,
            found.subject,
            found.raw,
        )
        source = f"{CORRECTION_PREFIX}{message_id}"
        if new_label not in LABELS:
            problems.append(f"{source}: skipped: unknown label {new_label!r}")
            continue
        label: Label = new_label
        if raw:
            made = example(source, label, bytes(raw))
            # Match by the stored Message-ID even if the parser would synthesise another one.
            message = made.message
            if message_key(message.message_id) != key:
                message = replace(message, message_id=message_id)
                made = Example(source, label, message, made.digest)
        else:
            text = found.body or ""
            message = InboundMessage(
                message_id=message_id, subject=subject or "", text=text, new_text=text
            )
            digest = hashlib.sha256(f"{subject}\0{text}".encode()).hexdigest()
            made = Example(source, label, message, digest)
        examples.append(replace(made, weight=found.weight))
    return Corpus(tuple(examples), tuple(problems))
