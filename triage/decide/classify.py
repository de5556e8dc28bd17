"""Load the triage model safely and classify messages with it.

The daemon imports this module; it never imports `triage.training.learn`. A model is two files: the
skops file holding one scikit-learn `Pipeline` (`TermCounter` → `TfidfTransformer` →
`CalibratedClassifierCV(LinearSVC)`) and its model card (`<name>-card.json`), which records the
library versions, the file's SHA-256, the corpus, the suggested thresholds and the evaluation.
Loading checks the card before it trusts the file, and loads the file with skops and an explicit
list of trusted types, never with pickle.

Header rules come first: a message
`triage.decide.guards.automated_reason` recognises as machine-sent is
`other` without asking the model. Otherwise the decision is the most probable label when its
probability reaches that label's threshold, else `review` (a person decides; never auto-answered).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import importlib
import io
import json
import logging
import os
import re
import stat
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import sklearn
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import InconsistentVersionWarning
from sklearn.feature_extraction.text import TfidfTransformer

from triage.core.errors import ModelError
from triage.core.models import LABELS, Classification, Decision, InboundMessage, Label
from triage.core.settings import SHIPPED_MODEL, ClassifierSettings
from triage.decide import guards
from triage.decide.features import FEATURE_VERSION, TermCounter
from triage.decide.spam import RULE_NAME as SPAM_RULE
from triage.decide.spam import upstream_spam

log = logging.getLogger(__name__)

CARD_FORMAT = 1
EXPLAIN_TERMS = 6
DEFAULT_THRESHOLD = 0.5
# A message with fewer known words than this (a foreign script, an empty body, an image) gives
# the model nothing to judge; it goes to review whatever the probabilities say.
MIN_KNOWN_TERMS = 3
LITTLE_TEXT = "too little known text to judge"

# The only types a model file may contain beyond those skops trusts by default. Anything else in a
# file means it was not written by `triage train` and is refused before it is loaded.
TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "triage.decide.features.TermCounter",
    }
)

# The scikit-learn estimators a triage model is built of (see `triage.training.learn`).
MODEL_ESTIMATORS: tuple[tuple[str, str], ...] = (
    ("sklearn.pipeline", "Pipeline"),
    ("sklearn.feature_extraction.text", "TfidfTransformer"),
    ("sklearn.calibration", "CalibratedClassifierCV"),
    ("sklearn.svm", "LinearSVC"),
)

FloatArray = npt.NDArray[np.float64]


def _skops_io() -> Any:
    """`skops.io`, imported on first use with only MODEL_ESTIMATORS as its trusted estimators.

    On import, skops lists every scikit-learn estimator to trust by default, which imports every
    scikit-learn module (and pytest, through scikit-learn's test helpers): about 20 MiB and
    seconds that the daemon would carry for its whole life to load one small pipeline. A model of
    other estimators is refused either way (TRUSTED_TYPES); when something else imported skops
    first (training does), that import is used as it is.
    """
    loaded = sys.modules.get("skops.io")
    if loaded is not None:
        return loaded
    import sklearn.utils

    estimators = [
        (name, getattr(importlib.import_module(module), name)) for module, name in MODEL_ESTIMATORS
    ]
    everything = sklearn.utils.all_estimators
    sklearn.utils.all_estimators = lambda type_filter=None: list(estimators)
    try:
        return importlib.import_module("skops.io")
    finally:
        sklearn.utils.all_estimators = everything


def _release_memory() -> None:
    """Give the memory freed after a model load back to the system (glibc keeps it otherwise).

    No `gc.collect()`: with scikit-learn loaded it takes over 100 ms, a third of the load time
    allowed, to free a few objects that the next automatic collection frees anyway.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


def card_path(model_path: Path) -> Path:
    """Where the model card of `model_path` lives: `model.skops` → `model-card.json`."""
    return model_path.with_name(f"{model_path.stem}-card.json")


def repo_root() -> Path:
    """The directory holding the `triage` package: the repository in a source checkout
    (site-packages in an installation, where it holds no model)."""
    return Path(__file__).resolve().parents[2]


def resolve_model_path(path: Path) -> Path:
    """The model file that `path` names, for reading or (re)training it.

    The default, the shipped model, becomes the file itself: in a source checkout that is
    `classifiers/model.skops` (`triage/shipped/model.skops` is a symlink to it, so training
    updates the repository's model instead of replacing the symlink), in an installation the
    packaged copy. Any other path is taken as given when absolute or present; else the same
    relative path in the repository, so a checkout's `classifiers/…` works from any directory.
    """
    if path == SHIPPED_MODEL:
        return path.resolve()
    if path.is_absolute() or path.exists():
        return path
    candidate = repo_root() / path
    return candidate if candidate.exists() else path


def is_installed_file(path: Path) -> bool:
    """True when `path` is a file of the installed `triage` package (the shipped model of an
    installation), which training must not overwrite: a package upgrade would replace it, and
    the installation's record of its files would no longer match."""
    return path.resolve().is_relative_to(Path(__file__).resolve().parents[1])


def file_sha256(data: bytes) -> str:
    """The hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ModelCard:
    """What is known about a model file: how it was built, on what, and how well it did.

    `thresholds` are the per-label thresholds suggested by cross-validation; settings override
    them. `evaluation` holds the figures `triage train` measured, as plain JSON data.
    """

    model_sha256: str
    sklearn_version: str
    skops_version: str
    feature_version: int
    classes: tuple[str, ...]
    thresholds: Mapping[str, float]
    corpus_sha256: str
    training_size: Mapping[str, int]
    created: str
    format: int = CARD_FORMAT
    model_file: str = ""
    numpy_version: str = ""
    python_version: str = ""
    pipeline: str = ""
    random_state: int = 0
    sources: Sequence[str] = ()
    evaluation: Mapping[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """A short name for the model, recorded with every classification it makes."""
        return f"{self.created[:10]}-{self.model_sha256[:12]}"

    def to_json(self) -> str:
        """The card as indented JSON text."""
        data = asdict(self)
        data["classes"] = list(self.classes)
        data["sources"] = list(self.sources)
        return json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> ModelCard:
        """Parse a card; raise `ModelError` naming `where` when it is not a valid card.

        Unknown keys are ignored, so that a newer triage's card with extra figures still loads.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"model card {where} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ModelError(f"model card {where} is not a JSON object")
        fields = cls.__dataclass_fields__
        required = [n for n, f in fields.items() if f.default is f.default_factory is MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise ModelError(f"model card {where} lacks {', '.join(missing)}; retrain the model")
        try:
            values = {k: v for k, v in data.items() if k in fields}
            values["classes"] = tuple(str(c) for c in data["classes"])
            values["sources"] = tuple(str(s) for s in data.get("sources", ()))
            values["thresholds"] = {str(k): float(v) for k, v in data["thresholds"].items()}
            values["training_size"] = {str(k): int(v) for k, v in data["training_size"].items()}
            values["feature_version"] = int(data["feature_version"])
            values["format"] = int(data.get("format", CARD_FORMAT))
            return cls(**values)
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"model card {where} has an invalid field: {exc}") from None


def _read_unwritable(path: Path, what: str) -> bytes:
    """The bytes of a model or card file, refused when group or others may write it.

    The card vouches for the model and the model decides what is answered: a file other users
    can change is as good as theirs. The mode checked is that of the file read (fstat).
    """
    with path.open("rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise ModelError(
                f"{what} {path} can be changed by other users (mode {stat.S_IMODE(mode):04o}); "
                f"run `chmod go-w {path}`"
            )
        return fh.read()


def read_card(model_path: Path) -> ModelCard:
    """The card of `model_path`; `ModelError` when it is missing, invalid or writable by
    other users."""
    path = card_path(model_path)
    try:
        text = _read_unwritable(path, "model card").decode("utf-8")
    except FileNotFoundError:
        raise ModelError(
            f"model card {path} is missing; train a model with `triage train`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"model card {path} cannot be read: {exc}") from None
    return ModelCard.from_json(text, path)


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def check_compatible(card: ModelCard, where: Path) -> None:
    """Raise `ModelError` unless this installation can use a model described by `card`."""
    if card.format != CARD_FORMAT:
        raise ModelError(
            f"model card {where} has format {card.format}, this triage reads {CARD_FORMAT}"
        )
    # scikit-learn only promises that a model works in the version that fitted it; patch
    # releases keep fitted attributes, minor releases may not.
    if _major_minor(card.sklearn_version) != _major_minor(sklearn.__version__):
        raise ModelError(
            f"model {where} was trained with scikit-learn {card.sklearn_version} but "
            f"{sklearn.__version__} is installed; retrain it with `triage train`"
        )
    if card.feature_version != FEATURE_VERSION:
        raise ModelError(
            f"model {where} uses feature version {card.feature_version}, this triage computes "
            f"version {FEATURE_VERSION}; retrain it with `triage train`"
        )
    unknown = set(card.classes) - set(LABELS)
    if unknown or len(card.classes) < 2:
        raise ModelError(f"model {where} has unexpected classes {list(card.classes)}")


def load_pipeline(path: Path, card: ModelCard) -> Any:
    """Load the pipeline of `path` after checking its hash and its types against `card`."""
    try:
        data = _read_unwritable(path, "model file")
    except FileNotFoundError:
        raise ModelError(f"model file {path} is missing; train one with `triage train`") from None
    except OSError as exc:
        raise ModelError(f"model file {path} cannot be read: {exc.strerror}") from None
    if file_sha256(data) != card.model_sha256:
        raise ModelError(
            f"model file {path} does not match its card (SHA-256 differs); "
            "restore both files together or retrain"
        )
    sio = _skops_io()
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # noqa: BLE001  # skops raises anything on a corrupt file
        raise ModelError(f"model file {path} is corrupt: {exc}") from None
    refused = sorted(set(untrusted) - TRUSTED_TYPES)
    if refused:
        raise ModelError(f"model file {path} contains untrusted types: {', '.join(refused)}")
    try:
        with warnings.catch_warnings():
            # The minor version was checked above; a patch-level difference is compatible.
            warnings.simplefilter("ignore", InconsistentVersionWarning)
            pipeline = sio.load(io.BytesIO(data), trusted=list(untrusted))
    except Exception as exc:  # noqa: BLE001  # skops raises anything on a corrupt file
        raise ModelError(f"model file {path} cannot be loaded: {exc}") from None
    classes = [str(c) for c in getattr(pipeline, "classes_", [])]
    if classes != list(card.classes) or not hasattr(pipeline, "predict_proba"):
        raise ModelError(f"model file {path} is not a triage classifier for {list(card.classes)}")
    return pipeline


def decide(
    probabilities: Mapping[str, float], thresholds: Mapping[str, float]
) -> tuple[Label, float, Decision]:
    """The most probable label, its probability, and the decision under `thresholds`.

    The decision is the label when its probability reaches the label's threshold, else
    `review`. Ties go to the label listed first in `LABELS` (sales), the costlier one to miss.
    """
    label = max(LABELS, key=lambda lb: (probabilities.get(lb, 0.0), -LABELS.index(lb)))
    confidence = float(probabilities.get(label, 0.0))
    threshold = thresholds.get(label, DEFAULT_THRESHOLD)
    decision: Decision = label if confidence >= threshold else "review"
    return label, confidence, decision


# The names of the rules that decide a message `other` by its headers, without the model.
RULE_NAMES = frozenset({*(r.name for r in guards.MACHINE_RULES), SPAM_RULE})


def rule_decided(reasons: Sequence[str]) -> bool:
    """True when recorded `reasons` name a rule that decided the message by its headers (the
    etiquette check records the same machine rules the classifier applies)."""
    return any(r.partition(":")[0] in RULE_NAMES for r in reasons)


def rule_classification(reason: str, version: str = "") -> Classification:
    """The classification of a message a header rule recognised as machine-sent."""
    return Classification(
        label="other",
        confidence=1.0,
        decision="other",
        probabilities={lb: 1.0 if lb == "other" else 0.0 for lb in LABELS},
        rule=reason,
        model_version=version,
    )


@dataclass(frozen=True)
class _Calibrated:
    """One calibrated linear classifier: decision values → per-class sigmoid probabilities."""

    weights: FloatArray  # (n_terms, n_outputs)
    intercept: FloatArray  # (n_outputs,)
    slope: FloatArray  # sigmoid a per output
    offset: FloatArray  # sigmoid b per output
    columns: npt.NDArray[np.intp]  # which class each output calibrates


class _LinearScorer:
    """The fitted pipeline's arithmetic without scikit-learn's per-call validation.

    scikit-learn spends about a millisecond per call checking its inputs; for one message that is
    most of the time. This computes the same numbers (tf-idf, linear decision, sigmoid
    calibration, normalisation) directly from the fitted attributes. `Classifier` checks it
    against `predict_proba` when the model is loaded and falls back to the pipeline if they differ.
    """

    def __init__(
        self,
        counter: TermCounter,
        idf: FloatArray,
        sublinear: bool,
        parts: list[_Calibrated],
        n_classes: int,
    ) -> None:
        self.counter = counter
        self.idf = idf
        self.sublinear = sublinear
        self.parts = parts
        self.n_classes = n_classes
        # Explanations use each class's weights averaged over the calibrated folds.
        coef = np.zeros((idf.shape[0], n_classes))
        for part in parts:
            coef[:, part.columns] += part.weights
        self.coef = coef / len(parts)
        # Words, stems and subject words count as known text; header and shape facts and lone
        # currency signs (which random bytes decode to) do not.
        self.is_text = np.array(
            [
                len(t) > 1 and (":" not in t or t.startswith("subject:"))
                for t in counter.terms_.tolist()
            ],
            dtype=bool,
        )

    @classmethod
    def from_pipeline(cls, pipeline: Any) -> _LinearScorer | None:
        """A scorer for `pipeline`, or None when its steps are not the expected ones."""
        try:
            counter, tfidf, calibrated = (step for _, step in pipeline.steps)
        except (AttributeError, ValueError):
            return None
        ok = (
            isinstance(counter, TermCounter)
            and isinstance(tfidf, TfidfTransformer)
            and tfidf.norm == "l2"
            and tfidf.use_idf
            and isinstance(calibrated, CalibratedClassifierCV)
            and calibrated.method == "sigmoid"
            and len(calibrated.classes_) > 2
        )
        if not ok:
            return None
        classes = [str(c) for c in calibrated.classes_]
        parts = []
        for fold in calibrated.calibrated_classifiers_:
            estimator = fold.estimator
            coef = getattr(estimator, "coef_", None)
            if coef is None or coef.shape[0] != len(fold.calibrators):
                return None
            columns = np.array([classes.index(str(c)) for c in estimator.classes_], dtype=np.intp)
            parts.append(
                _Calibrated(
                    weights=np.ascontiguousarray(np.asarray(coef, dtype=np.float64).T),
                    intercept=np.asarray(estimator.intercept_, dtype=np.float64),
                    slope=np.array([c.a_ for c in fold.calibrators], dtype=np.float64),
                    offset=np.array([c.b_ for c in fold.calibrators], dtype=np.float64),
                    columns=columns,
                )
            )
        idf = np.asarray(tfidf.idf_, dtype=np.float64)
        return cls(counter, idf, bool(tfidf.sublinear_tf), parts, len(classes))

    def tfidf(self, messages: Sequence[InboundMessage]) -> Any:
        """The l2-normalised tf-idf rows of `messages` (a CSR matrix)."""
        x = self.counter.transform(messages)
        data = x.data
        if self.sublinear:
            np.log(data, out=data)
            data += 1.0
        data *= self.idf[x.indices]
        rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
        norms = np.sqrt(np.bincount(rows, weights=data * data, minlength=x.shape[0]))
        norms[norms == 0.0] = 1.0
        data /= norms[rows]
        return x

    def known_terms(self, x: Any) -> npt.NDArray[np.intp]:
        """How many distinct vocabulary words (not header facts) each row of `x` has."""
        rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
        counts = np.bincount(rows, weights=self.is_text[x.indices], minlength=x.shape[0])
        return counts.astype(np.intp)

    def probabilities(self, x: Any) -> FloatArray:
        """Calibrated class probabilities for tf-idf rows `x`, as `predict_proba` computes them."""
        n = x.shape[0]
        total = np.zeros((n, self.n_classes))
        for part in self.parts:
            decision = x @ part.weights + part.intercept
            proba = np.zeros((n, self.n_classes))
            # scikit-learn's _SigmoidCalibration: expit(-(a * f + b)).
            proba[:, part.columns] = 1.0 / (1.0 + np.exp(decision * part.slope + part.offset))
            denominator = proba.sum(axis=1, keepdims=True)
            uniform = np.full_like(proba, 1.0 / self.n_classes)
            total += np.divide(proba, denominator, out=uniform, where=denominator != 0)
        total /= len(self.parts)
        total[(total > 1.0) & (total <= 1.0 + 1e-5)] = 1.0
        return total

    def top_terms(self, x: Any, row: int, column: int, count: int) -> tuple[str, ...]:
        """The terms of message `row` that pushed most towards class `column`."""
        start, end = x.indptr[row], x.indptr[row + 1]
        indices = x.indices[start:end]
        contributions = x.data[start:end] * self.coef[indices, column]
        terms = self.counter.terms_
        found: list[str] = []
        for i in np.argsort(-contributions, kind="stable"):
            if contributions[i] <= 0 or len(found) == count:
                break
            term = str(terms[indices[i]])
            # Digits are masked to 0 for the model ("000 units"); "000" tells a person nothing.
            if not _NUMBER_TERM.match(term):
                found.append(term)
        return tuple(found)


# A term that is only a masked number (features.normalise turns every digit into 0).
_NUMBER_TERM = re.compile(r"(?:subject:)?0+\*?$")


def _probe_messages() -> list[InboundMessage]:
    # A few varied messages to check the fast path against the pipeline at load time.
    texts = [
        ("Quote request", "Please send a price for 500 units, delivery in March. Budget agreed."),
        ("Newsletter", "Read our latest case studies. Unsubscribe here."),
        ("", ""),
        ("Brochure?", "What do you do exactly? Could you send a catalogue?"),
    ]
    return [
        InboundMessage(message_id=f"<probe{i}@triage>", subject=s, text=t, new_text=t)
        for i, (s, t) in enumerate(texts)
    ]


class Classifier:
    """A loaded model with its card and the thresholds in force: classifies messages.

    Build it with `load_classifier`. Thresholds are the card's suggestions overridden by
    `thresholds` (the operator's settings) label by label.
    """

    def __init__(
        self,
        pipeline: Any,
        card: ModelCard,
        thresholds: Mapping[str, float] | None = None,
        path: Path | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.card = card
        self.path = path
        self.classes: tuple[str, ...] = tuple(str(c) for c in pipeline.classes_)
        self.thresholds: Mapping[str, float] = {
            **{c: DEFAULT_THRESHOLD for c in self.classes},
            **card.thresholds,
            **(thresholds or {}),
        }
        # Spam-verdict headers our own server adds (settings): a header rule like the others.
        self.spam_headers: tuple[str, ...] = ()
        self._scorer = _LinearScorer.from_pipeline(pipeline)
        if self._scorer is not None and not self._scorer_agrees():
            log.warning(
                "model %s: fast scoring disagrees with the pipeline; using the pipeline", path
            )
            self._scorer = None

    @property
    def version(self) -> str:
        """The model's short name (card date and hash prefix)."""
        return self.card.version

    def with_thresholds(self, thresholds: Mapping[str, float] | None) -> Classifier:
        """The same model with other thresholds (the card's suggestions where not given)."""
        clone = object.__new__(Classifier)
        clone.__dict__.update(self.__dict__)
        clone.thresholds = {
            **{c: DEFAULT_THRESHOLD for c in self.classes},
            **self.card.thresholds,
            **(thresholds or {}),
        }
        return clone

    def _scorer_agrees(self) -> bool:
        assert self._scorer is not None
        probe = _probe_messages()
        fast = self._scorer.probabilities(self._scorer.tfidf(probe))
        slow = np.asarray(self.pipeline.predict_proba(probe), dtype=np.float64)
        return bool(np.allclose(fast, slow, rtol=0.0, atol=1e-9))

    def probabilities(self, messages: Sequence[InboundMessage]) -> FloatArray:
        """Class probabilities of `messages` from the model alone: shape (n, len(classes))."""
        if not messages:
            return np.zeros((0, len(self.classes)))
        if self._scorer is not None:
            return self._scorer.probabilities(self._scorer.tfidf(messages))
        return np.asarray(self.pipeline.predict_proba(list(messages)), dtype=np.float64)

    def classify_many(
        self,
        messages: Sequence[InboundMessage],
        *,
        rules: bool = True,
        explain: bool = True,
        automated: Sequence[str | None] | None = None,
    ) -> list[Classification]:
        """Classify `messages`: header rules first (unless `rules` is false), then the model.

        `automated`, when given, holds `guards.automated_reason` of each message as the caller
        already found it (the etiquette check runs the same machine rules), so they run once.
        """
        if automated is not None and len(automated) != len(messages):
            raise ValueError("one automated reason per message")
        results: list[Classification | None] = [None] * len(messages)
        pending: list[int] = []
        for i, msg in enumerate(messages):
            reason = None
            if rules:
                machine = guards.automated_reason(msg) if automated is None else automated[i]
                reason = machine or upstream_spam(msg, self.spam_headers)
            if reason is not None:
                results[i] = rule_classification(reason, self.version)
            else:
                pending.append(i)
        if pending:
            batch = [messages[i] for i in pending]
            x = None
            known = np.full(len(batch), MIN_KNOWN_TERMS)
            if self._scorer is not None:
                x = self._scorer.tfidf(batch)
                proba = self._scorer.probabilities(x)
                known = self._scorer.known_terms(x)
            else:
                proba = self.probabilities(batch)
            for row, i in enumerate(pending):
                probabilities = {c: float(p) for c, p in zip(self.classes, proba[row], strict=True)}
                label, confidence, decision = decide(probabilities, self.thresholds)
                explanation: tuple[str, ...] = ()
                if explain and x is not None and self._scorer is not None:
                    column = self.classes.index(label)
                    explanation = self._scorer.top_terms(x, row, column, EXPLAIN_TERMS)
                if known[row] < MIN_KNOWN_TERMS:
                    decision = "review"
                    explanation = (LITTLE_TEXT, *explanation)
                results[i] = Classification(
                    label=label,
                    confidence=confidence,
                    decision=decision,
                    probabilities=probabilities,
                    explanation=explanation,
                    model_version=self.version,
                )
        return [r for r in results if r is not None]

    def classify(
        self, msg: InboundMessage, *, rules: bool = True, explain: bool = True
    ) -> Classification:
        """Classify one message: a header rule if one applies, else the model."""
        return self.classify_many([msg], rules=rules, explain=explain)[0]


def configured_thresholds(settings: ClassifierSettings) -> Mapping[str, float] | None:
    """The thresholds the operator set in `classifier.thresholds`, or None when left default.

    Pass this to `load_classifier`/`ModelHandle` so the card's suggestions (chosen on
    cross-validation) apply unless the operator chose otherwise.
    """
    return dict(settings.thresholds) if "thresholds" in settings.model_fields_set else None


def load_classifier(path: Path, thresholds: Mapping[str, float] | None = None) -> Classifier:
    """Load the model at `path` with its card; raise `ModelError` with one line if unusable.

    `thresholds` (from settings) override the card's suggestions label by label.
    """
    card = read_card(path)
    check_compatible(card, path)
    pipeline = load_pipeline(path, card)
    classifier = Classifier(pipeline, card, thresholds, path)
    # The file's bytes and skops' intermediate state are freed now: return their pages.
    _release_memory()
    return classifier


def _signature(path: Path) -> tuple[tuple[int, int], ...]:
    sig = []
    for p in (path, card_path(path)):
        try:
            st = os.stat(p)
            sig.append((st.st_mtime_ns, st.st_size))
        except OSError:
            sig.append((0, -1))
    return tuple(sig)


class ModelHandle:
    """The current classifier, reloaded when the model or card file changes on disk.

    The daemon calls `get()` once per batch. A change is seen by the files' mtime and size; a
    model that fails to load is logged once and the previous one stays in use, so a bad
    `triage train` never stops the service.
    """

    def __init__(
        self,
        path: Path,
        thresholds: Mapping[str, float] | None = None,
        loader: Callable[[Path, Mapping[str, float] | None], Classifier] = load_classifier,
        spam_headers: Sequence[str] = (),
    ) -> None:
        self.path = path
        self.thresholds = dict(thresholds) if thresholds is not None else None
        self.spam_headers = tuple(spam_headers)
        self._loader = loader
        self._current: Classifier | None = None
        self._signature: tuple[tuple[int, int], ...] | None = None

    def get(self) -> Classifier:
        """The classifier to use now; `ModelError` only when no model was ever loaded."""
        signature = _signature(self.path)
        if signature != self._signature:
            self._reload(signature)
        if self._current is None:
            raise ModelError(f"model {self.path} is not loaded")
        return self._current

    def _reload(self, signature: tuple[tuple[int, int], ...]) -> None:
        # `triage train` renames the card, then the model, into place: a load between the two
        # sees a mismatch. If the files changed again while loading, that was the case: retry.
        for _ in range(3):
            self._signature = signature
            try:
                self._current = self._loader(self.path, self.thresholds)
                self._current.spam_headers = self.spam_headers
                log.info("model %s loaded (%s)", self.path, self._current.version)
                return
            except ModelError as exc:
                error = exc
            signature = _signature(self.path)
            if signature == self._signature:
                break
        if self._current is None:
            raise error
        log.error("model %s not reloaded, keeping %s: %s", self.path, self._current.version, error)
