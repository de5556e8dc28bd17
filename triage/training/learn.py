"""Fit, cross-validate, evaluate and save the triage model. Never imported by the daemon.

The recipe is one scikit-learn `Pipeline`: `TermCounter` (words, word pairs, stems, subject words
and header facts of each message; `triage.decide.features`) → `TfidfTransformer` (sub-linear tf) →
`CalibratedClassifierCV(LinearSVC, method="sigmoid")`, so that the decision values become
probabilities a threshold can be set on. Everything is seeded: the same corpus gives the same model.

Thresholds are chosen on cross-validated probabilities by minimising a cost per message (`COSTS`)
in which a missed sales lead and an automatic reply to `other` mail are the expensive mistakes and
sending a message to a person (`review`) is cheap.
"""

from __future__ import annotations

import itertools
import os
import platform
import stat
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import sklearn
import skops
import skops.io as sio
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC

from triage.core.errors import ConfigError, ModelError
from triage.core.models import DECISIONS, LABELS, Decision, Label
from triage.decide.classify import (
    TRUSTED_TYPES,
    Classifier,
    ModelCard,
    card_path,
    decide,
    file_sha256,
)
from triage.decide.features import FEATURE_VERSION, TermCounter
from triage.training.corpus import Corpus, message_key

RANDOM_STATE = 0
CV_FOLDS = 5
HOLDOUT_SHARE = 0.2
MIN_DF = 2
SVM_C = 1.0
THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.35 + 0.05 * i, 2) for i in range(13))

# What each kind of mistake costs, in units of one message a person has to read (`review`).
# A sales-ready prospect decided `marketing` or `other` is a missed hot lead: the worst mistake.
# An automatic reply to `other` mail (spam, a notification, a customer's support request) comes
# next; a marketing inquiry left unanswered or sent to sales costs less. Correct decisions cost 0.
COSTS: Mapping[tuple[str, str], float] = {
    ("sales", "other"): 10.0,
    ("sales", "marketing"): 9.0,
    ("sales", "review"): 1.0,
    ("other", "sales"): 8.0,
    ("other", "marketing"): 8.0,
    ("other", "review"): 1.0,
    ("marketing", "other"): 4.0,
    ("marketing", "sales"): 2.0,
    ("marketing", "review"): 1.0,
}
# Thresholds are chosen on the out-of-fold probabilities of this many differently shuffled
# cross-validations pooled together: one run of 640 messages moves them by 0.1 from seed to seed.
THRESHOLD_REPEATS = 3

Progress = Callable[[int, int], None]
FloatArray = npt.NDArray[np.float64]


def describe_pipeline() -> str:
    """One line naming the recipe, for the model card."""
    return (
        f"TermCounter(min_df={MIN_DF}) -> TfidfTransformer(sublinear_tf) -> "
        f"CalibratedClassifierCV(LinearSVC(C={SVM_C}), sigmoid, ensemble=False)"
    )


def build_pipeline(calibration_folds: int = CV_FOLDS) -> Pipeline:
    """The untrained pipeline; `calibration_folds` folds fit the sigmoid calibration."""
    svm = LinearSVC(C=SVM_C, random_state=RANDOM_STATE, max_iter=20_000)
    return Pipeline(
        [
            ("terms", TermCounter(min_df=MIN_DF)),
            ("tfidf", TfidfTransformer(sublinear_tf=True)),
            (
                "classifier",
                # ensemble=False: one SVM fitted on all data, calibrated on cross-validated
                # decision values: a single set of weights, smaller and faster to load.
                CalibratedClassifierCV(svm, method="sigmoid", cv=calibration_folds, ensemble=False),
            ),
        ]
    )


def folds_for(corpus: Corpus, wanted: int = CV_FOLDS) -> int:
    """How many stratified folds `corpus` allows (at most `wanted`); `ConfigError` if too small.

    Every label needs at least two examples: one to learn from and one to calibrate on.
    """
    counts = corpus.counts()
    thin = {label: n for label, n in counts.items() if n < 2}
    if thin:
        listed = ", ".join(f"{label}: {n}" for label, n in thin.items())
        raise ConfigError(f"too few examples to train ({listed}); every label needs at least 2")
    return min(wanted, *counts.values())


def fit(corpus: Corpus) -> Pipeline:
    """The pipeline fitted on every example of `corpus`."""
    pipeline = build_pipeline(folds_for(corpus))
    pipeline.fit(
        corpus.messages, corpus.labels, classifier__sample_weight=np.asarray(corpus.weights)
    )
    return pipeline


def cross_validate(
    corpus: Corpus,
    folds: int = CV_FOLDS,
    seed: int = RANDOM_STATE,
    progress: Callable[[], None] | None = None,
) -> FloatArray:
    """Out-of-fold probabilities for each example (columns in `LABELS` order).

    Stratified and shuffled with `seed`; each fold's model is calibrated on its own training part
    only, so the probabilities are those of a model that never saw the message. `progress` is
    called after each fold.
    """
    k = folds_for(corpus, folds)
    labels = np.array(corpus.labels)
    proba = np.zeros((len(corpus), len(LABELS)))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for train, test in splitter.split(np.zeros(len(labels)), labels):
        part = corpus.subset(train.tolist())
        model = build_pipeline(folds_for(part))
        model.fit(part.messages, part.labels)
        columns = [LABELS.index(str(c)) for c in model.classes_]
        proba[np.ix_(test, columns)] = model.predict_proba(corpus.subset(test.tolist()).messages)
        if progress is not None:
            progress()
    return proba


def decisions_for(
    proba: FloatArray, thresholds: Mapping[str, float]
) -> tuple[list[Label], list[Decision]]:
    """(most probable label, decision) per row of `proba` (columns in `LABELS` order)."""
    labels: list[Label] = []
    decisions: list[Decision] = []
    for row in proba:
        label, _, decision = decide(dict(zip(LABELS, row.tolist(), strict=True)), thresholds)
        labels.append(label)
        decisions.append(decision)
    return labels, decisions


def choose_thresholds(truth: Sequence[str], proba: FloatArray) -> dict[str, float]:
    """Per-label thresholds minimising the total cost (`COSTS`) on `proba`; ties: fewer reviews.

    Each message is decided as its most probable label if that label's threshold is met, else
    `review`; every combination of `THRESHOLD_GRID` values is tried.
    """
    best_label = proba.argmax(axis=1)
    confidence = proba.max(axis=1)
    if_decided = np.array(
        [COSTS.get((t, LABELS[i]), 0.0) for t, i in zip(truth, best_label, strict=True)]
    )
    if_review = np.array([COSTS.get((t, "review"), 0.0) for t in truth])
    best: tuple[float, int, tuple[float, ...]] | None = None
    for combo in itertools.product(THRESHOLD_GRID, repeat=len(LABELS)):
        decided = confidence >= np.array(combo)[best_label]
        cost = float(np.where(decided, if_decided, if_review).sum())
        key = (cost, int((~decided).sum()), combo)
        if best is None or key[:2] < best[:2]:
            best = key
    assert best is not None
    return dict(zip(LABELS, best[2], strict=True))


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def report(
    truth: Sequence[str], predicted: Sequence[str], decided: Sequence[str]
) -> dict[str, Any]:
    """Evaluation figures as plain data (for printing and for the model card).

    `predicted` is the most probable label of each message (model quality: per-label precision,
    recall, F1, confusion matrix); `decided` is what triage would do after thresholds (review
    rate, sales recall, and the share of `other` mail that would get an automatic reply).
    Undefined ratios (no such messages) are None.
    """
    n = len(truth)
    per_label: dict[str, dict[str, Any]] = {}
    f1s = []
    for label in LABELS:
        tp = sum(t == p == label for t, p in zip(truth, predicted, strict=True))
        fp = sum(p == label != t for t, p in zip(truth, predicted, strict=True))
        support = sum(t == label for t in truth)
        precision = _ratio(tp, tp + fp)
        recall = _ratio(tp, support)
        f1 = (
            round(2 * precision * recall / (precision + recall), 4)
            if precision and recall
            else (0.0 if support else None)
        )
        if support:
            f1s.append(f1 or 0.0)
        per_label[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    confusion = {
        t: {
            p: sum(a == t and b == p for a, b in zip(truth, predicted, strict=True)) for p in LABELS
        }
        for t in LABELS
    }
    decision_table = {
        t: {
            d: sum(a == t and b == d for a, b in zip(truth, decided, strict=True))
            for d in DECISIONS
        }
        for t in LABELS
    }
    sales, other = decision_table["sales"], decision_table["other"]
    n_sales, n_other = sum(sales.values()), sum(other.values())
    decided_counts = {d: sum(1 for x in decided if x == d) for d in LABELS}
    return {
        "messages": n,
        "accuracy": _ratio(sum(t == p for t, p in zip(truth, predicted, strict=True)), n),
        "macro_f1": round(sum(f1s) / len(f1s), 4) if f1s else None,
        "labels": per_label,
        "confusion": confusion,
        "decisions": decision_table,
        "decided_precision": {d: _ratio(decision_table[d][d], decided_counts[d]) for d in LABELS},
        "review_rate": _ratio(sum(1 for d in decided if d == "review"), n),
        "sales_recall": _ratio(sales["sales"], n_sales),
        "sales_missed": _ratio(sales["marketing"] + sales["other"], n_sales),
        "other_auto_reply_rate": _ratio(other["sales"] + other["marketing"], n_other),
    }


def cross_validation_report(
    corpus: Corpus,
    thresholds: Mapping[str, float] | None = None,
    folds: int = CV_FOLDS,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Cross-validate on `corpus` and report; thresholds chosen on the folds unless given.

    Without `thresholds`, `THRESHOLD_REPEATS` cross-validations with different shuffles are
    pooled to choose them; the figures reported are those of the first (seed `RANDOM_STATE`),
    plus the macro-F1 of every repeat to show the spread. `progress(done, total)` counts folds.
    Returns the report and the thresholds it used.
    """
    k = folds_for(corpus, folds)
    repeats = 1 if thresholds is not None else THRESHOLD_REPEATS
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, repeats * k)

    runs = [cross_validate(corpus, k, RANDOM_STATE + r, step) for r in range(repeats)]
    if thresholds is None:
        chosen = choose_thresholds(corpus.labels * repeats, np.vstack(runs))
    else:
        chosen = dict(thresholds)
    predicted, decided = decisions_for(runs[0], chosen)
    result = report(corpus.labels, predicted, decided)
    result["folds"] = k
    result["thresholds"] = chosen
    result["calibration"] = calibration(corpus.labels, runs[0])
    result["macro_f1_repeats"] = [
        report(corpus.labels, *decisions_for(p, chosen))["macro_f1"] for p in runs
    ]
    return result, chosen


CALIBRATION_BINS = 10


def calibration(
    truth: Sequence[str], proba: FloatArray, bins: int = CALIBRATION_BINS
) -> dict[str, dict[str, Any]]:
    """How well the probabilities match reality, per label (one label against the rest).

    The out-of-fold probabilities of each label are put in `bins` equal-width bins; per bin the
    mean probability (`confidence`), the share that truly had the label (`frequency`) and the
    count. The expected calibration error (ECE) is the count-weighted mean gap between the two:
    0 is perfect; 0.05 means a "90%" is on average 5 points off.
    """
    truth_array = np.asarray(truth)
    out: dict[str, dict[str, Any]] = {}
    edges = np.linspace(0.0, 1.0, bins + 1)
    for column, label in enumerate(LABELS):
        p = proba[:, column]
        actual = (truth_array == label).astype(np.float64)
        which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
        rows = []
        error = 0.0
        for b in range(bins):
            members = which == b
            count = int(members.sum())
            if not count:
                continue
            confidence, frequency = float(p[members].mean()), float(actual[members].mean())
            error += abs(confidence - frequency) * count
            rows.append(
                {
                    "low": round(float(edges[b]), 2),
                    "high": round(float(edges[b + 1]), 2),
                    "confidence": round(confidence, 4),
                    "frequency": round(frequency, 4),
                    "count": count,
                }
            )
        out[label] = {"ece": round(error / len(p), 4) if len(p) else None, "bins": rows}
    return out


def evaluate_classifier(
    classifier: Classifier, corpus: Corpus, *, rules: bool = True
) -> dict[str, Any]:
    """Report how `classifier` does on `corpus` (header rules applied unless `rules` is false)."""
    results = classifier.classify_many(corpus.messages, rules=rules, explain=False)
    out = report(corpus.labels, [r.label for r in results], [r.decision for r in results])
    out["rule_decided"] = sum(1 for r in results if r.rule is not None)
    return out


def save_model(pipeline: Pipeline, card: ModelCard, path: Path) -> ModelCard:
    """Write `pipeline` to `path` with skops and its card beside it; return the final card.

    Both files are written to temporary names first and renamed into place, the model last, so
    a daemon watching the model never sees a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    sio.dump(pipeline, tmp, compression=zipfile.ZIP_DEFLATED)
    data = tmp.read_bytes()
    refused = sorted(set(sio.get_untrusted_types(data=data)) - TRUSTED_TYPES)
    if refused:
        tmp.unlink()
        raise ModelError(f"the trained model contains types triage does not trust: {refused}")
    final = replace(card, model_sha256=file_sha256(data), model_file=path.name)
    card_file = card_path(path)
    card_tmp = card_file.with_name(f".{card_file.name}.tmp")
    card_tmp.write_text(final.to_json(), encoding="utf-8")
    # The daemon refuses model files others can write, whatever umask `triage train` ran with.
    for written in (tmp, card_tmp):
        written.chmod(stat.S_IMODE(written.stat().st_mode) & ~(stat.S_IWGRP | stat.S_IWOTH))
    os.replace(card_tmp, card_file)
    os.replace(tmp, path)
    return final


def make_card(
    pipeline: Pipeline,
    corpus: Corpus,
    thresholds: Mapping[str, float],
    evaluation: Mapping[str, Any],
    sources: Sequence[str],
) -> ModelCard:
    """The card of a freshly fitted pipeline (its file hash is filled in by `save_model`)."""
    return ModelCard(
        model_sha256="",
        sklearn_version=sklearn.__version__,
        skops_version=str(skops.__version__),
        feature_version=FEATURE_VERSION,
        classes=tuple(str(c) for c in pipeline.classes_),
        thresholds=dict(thresholds),
        corpus_sha256=corpus.sha256(),
        training_size=corpus.counts(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        numpy_version=np.__version__,
        python_version=platform.python_version(),
        pipeline=describe_pipeline(),
        random_state=RANDOM_STATE,
        sources=tuple(sources),
        evaluation=dict(evaluation),
    )


@dataclass(frozen=True)
class TrainingRun:
    """What `train` did: the saved card and the cross-validation report behind it."""

    card: ModelCard
    cross_validation: dict[str, Any]


def train(
    corpus: Corpus,
    output: Path,
    sources: Sequence[str] = (),
    progress: Progress | None = None,
) -> TrainingRun:
    """Cross-validate, choose thresholds, fit on everything and save to `output` with its card."""
    cv_report, thresholds = cross_validation_report(corpus, progress=progress)
    pipeline = fit(corpus)
    card = make_card(pipeline, corpus, thresholds, {"cross_validation": cv_report}, sources)
    return TrainingRun(save_model(pipeline, card, output), cv_report)


# Two models that differ by a few training examples score a message or two apart on a held-out
# split of a few hundred by chance alone; a difference that small says nothing about the
# corrections. (The guard that matters comes after: `triage model compare/promote`.)
NOISE = 0.01


@dataclass(frozen=True)
class Comparison:
    """Held-out scores of the model without and with the corrections."""

    held_out: int
    corrected_held_out: int
    current: dict[str, Any]
    candidate: dict[str, Any]

    @property
    def candidate_wins(self) -> bool:
        """True unless the corrections make the model clearly worse: macro-F1 or sales recall
        lower by more than `NOISE` on the held-out split."""

        def worse(key: str) -> bool:
            return (self.candidate[key] or 0.0) < (self.current[key] or 0.0) - NOISE

        return not (worse("macro_f1") or worse("sales_recall"))


def compare_corrections(
    base: Corpus, corrections: Corpus, thresholds: Mapping[str, float]
) -> Comparison:
    """Score the model trained with and without `corrections` on one held-out stratified split.

    The split is drawn from the corrected data (the labels people gave are the truth). Both
    models are trained on the rest: the current one on the corpus as it is, the candidate with
    the corrections applied; neither sees a held-out message in any version.
    """
    combined = base.with_corrections(corrections)
    labels = np.array(combined.labels)
    folds_for(combined)
    splitter = StratifiedShuffleSplit(
        n_splits=1, test_size=HOLDOUT_SHARE, random_state=RANDOM_STATE
    )
    try:
        train_idx, test_idx = next(splitter.split(np.zeros(len(labels)), labels))
    except ValueError as exc:
        raise ConfigError(f"too few examples for a held-out comparison: {exc}") from None
    test = combined.subset(sorted(test_idx.tolist()))
    held_keys = {message_key(e.message.message_id) for e in test.examples}
    held_digests = {e.digest for e in test.examples}
    current_train = Corpus(
        tuple(
            e
            for e in base.examples
            if message_key(e.message.message_id) not in held_keys and e.digest not in held_digests
        )
    )
    candidate_train = combined.subset(sorted(train_idx.tolist()))
    scores = []
    for training_set in (current_train, candidate_train):
        model = fit(training_set)
        columns = [LABELS.index(str(c)) for c in model.classes_]
        proba = np.zeros((len(test), len(LABELS)))
        proba[:, columns] = model.predict_proba(test.messages)
        predicted, decided = decisions_for(proba, thresholds)
        scores.append(report(test.labels, predicted, decided))
    corrected = {message_key(e.message.message_id) for e in corrections.examples}
    return Comparison(
        held_out=len(test),
        corrected_held_out=len(held_keys & corrected),
        current=scores[0],
        candidate=scores[1],
    )
