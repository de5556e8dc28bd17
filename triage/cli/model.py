"""`triage train`, `triage evaluate`, `triage classify`: build, measure and use the model.

None of them needs a configuration file: without one they use the default classifier settings
(the model shipped with triage) and the thresholds suggested by the model card. With `--config`
they use the configured model path, thresholds, store and reply addresses.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from triage.cli.common import fail, load, options, user_errors

if TYPE_CHECKING:
    from triage.core.models import Classification, InboundMessage, Verdict
    from triage.core.settings import Settings, StoreSettings
    from triage.decide.classify import Classifier
    from triage.decide.guards import GuardContext
    from triage.ingest.sources import SourceItem
    from triage.training.corpus import Corpus

BATCH = 256  # messages classified together: amortises the per-call cost, bounds memory
# Parser defects that mean the bytes are not an email at all: reported as errors, not classified.
NOT_A_MESSAGE = frozenset({"empty message", "no headers"})

ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="Model file (default: classifier.model_path, else the model shipped with triage).",
        dir_okay=False,
    ),
]
CorpusOption = Annotated[
    Path | None,
    typer.Option(
        "--corpus",
        help="Directory with .eml files and labels.csv files (default: classifiers/corpus).",
        file_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def _settings(ctx: typer.Context) -> Settings | None:
    """The full settings when a configuration file is given, else None (defaults apply)."""
    from triage.core.settings import CONFIG_ENV
    from triage.ops.logs import setup_logging

    opts = options(ctx)
    if opts.config is not None or os.environ.get(CONFIG_ENV):
        return load(ctx)
    setup_logging(opts.log_format or "text", opts.log_level or "WARNING")
    return None


def _model_path(settings: Settings | None, model: Path | None) -> Path:
    from triage.core.settings import ClassifierSettings
    from triage.decide.classify import resolve_model_path

    if model is not None:
        return model
    configured = (settings.classifier if settings else ClassifierSettings()).model_path
    return resolve_model_path(configured)


def _thresholds(settings: Settings | None) -> Mapping[str, float] | None:
    from triage.decide.classify import configured_thresholds

    return configured_thresholds(settings.classifier) if settings else None


def _load_classifier(settings: Settings | None, model: Path | None) -> Classifier:
    from triage.decide.classify import load_classifier

    with user_errors():
        classifier = load_classifier(_model_path(settings, model), _thresholds(settings))
    if settings is not None:
        classifier.spam_headers = settings.classifier.trusted_spam_headers
    return classifier


def _note(message: str) -> None:
    print(f"triage: {message}", file=sys.stderr)


@contextmanager
def _progress(description: str) -> Iterator[Callable[[int, int | None], None]]:
    """A `progress(done, total)` callback (total None: unknown) drawing a rich bar on stderr
    when stderr is a terminal, doing nothing otherwise."""
    if not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


# -- train ----------------------------------------------------------------------------------------


def train(
    ctx: typer.Context,
    corpus: CorpusOption = None,
    extra: Annotated[
        list[str] | None,
        typer.Option(
            "--extra",
            metavar="DIR:LABEL",
            help="Also train on every message in DIR (directory, mbox or Maildir) as LABEL. "
            "Repeatable.",
        ),
    ] = None,
    with_corrections: Annotated[
        bool,
        typer.Option(
            "--with-corrections",
            help="Add the labels people gave (the store's corrections) and write a candidate "
            "beside the live model (<stem>.candidate.skops), only if it does not score worse on "
            "a held-out split than without them; `triage model compare|promote` take it from "
            "there.",
        ),
    ] = False,
    store: Annotated[
        Path | None,
        typer.Option(
            "--store", help="Store to read corrections from (default: store.path).", dir_okay=False
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Model file to write; its card goes beside it (default: the model path, or "
            "its candidate with --with-corrections).",
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Train the model on the corpus (plus extra folders and corrections) and write it with its
    model card. Deterministic: the same data gives the same model."""
    from triage.core.settings import StoreSettings
    from triage.decide.classify import card_path, is_installed_file
    from triage.training import learn
    from triage.training.blind import refuse_frozen
    from triage.training.corpus import load_corpus, load_folder, resolve_corpus_dir, split_label

    settings = _settings(ctx)
    live = _model_path(settings, None)
    target = output or live
    if output is None and with_corrections:
        from triage.training.compare import candidate_path

        # Corrections never replace the live model directly: `triage model promote` does, after
        # comparing the two.
        target = candidate_path(live)
    if output is None and is_installed_file(target):
        fail(
            f"{target} is the model installed with triage; write yours with --output PATH "
            "and set classifier.model_path to it"
        )
    with user_errors():
        corpus_dir = resolve_corpus_dir(corpus)
        refuse_frozen(corpus_dir)
        data = load_corpus(corpus_dir)
        sources = [f"corpus {corpus or corpus_dir}: {len(data)} messages"]
        for spec in extra or []:
            path, label = split_label(spec)
            refuse_frozen(path)
            folder = load_folder(path, label)
            sources.append(f"extra {spec}: {len(folder)} messages")
            data = data + folder
        for problem in data.problems:
            _note(problem)
        if with_corrections:
            # --store names a SQLite file; otherwise the configured store (file or server).
            source = (
                StoreSettings(path=store)
                if store
                else (settings.store if settings else StoreSettings())
            )
            corrected = _apply_corrections(data, source, sources)
            if corrected is None:
                return
            data = corrected
        with _progress("cross-validating") as progress:
            run = learn.train(data, target, sources, progress)
    _print_training(run.card.training_size, run.cross_validation)
    print(f"wrote {target} and {card_path(target)}")
    if target != live:
        print(
            f"the live model {live} is unchanged; compare with `triage model compare`, "
            "put it live with `triage model promote`"
            if output is None
            else f"the live model {live} is unchanged"
        )


def _apply_corrections(base: Corpus, store: StoreSettings, sources: list[str]) -> Corpus | None:
    """The corpus with the store's corrections if they do not make the model worse, else None.

    Prints the held-out scores without and with the corrections.
    """
    from triage.core.models import LABELS
    from triage.training import learn
    from triage.training.corpus import load_corrections

    corrections = load_corrections(store)
    for problem in corrections.problems:
        _note(problem)
    if not corrections.examples:
        print(f"no corrections in {store.describe()}; training on the corpus alone")
        return base
    comparison = learn.compare_corrections(base, corrections, dict.fromkeys(LABELS, 0.5))
    print(
        f"held-out split: {comparison.held_out} messages "
        f"({comparison.corrected_held_out} of them corrected), stratified, seed "
        f"{learn.RANDOM_STATE}"
    )
    for name, scores in (
        ("without corrections", comparison.current),
        (f"with {len(corrections)} corrections", comparison.candidate),
    ):
        print(
            f"  {name:<24} macro-F1 {_pct(scores['macro_f1'])}  "
            f"sales recall {_pct(scores['labels']['sales']['recall'])}"
        )
    if not comparison.candidate_wins:
        print(
            "the corrections make the model worse on the held-out split: no model written "
            "(model not replaced)"
        )
        return None
    sources.append(f"corrections {store.describe()}: {len(corrections)} messages")
    return base.with_corrections(corrections)


def _print_training(sizes: Mapping[str, int], cv: Mapping[str, Any]) -> None:
    counts = ", ".join(f"{label} {n}" for label, n in sizes.items())
    print(f"trained on {sum(sizes.values())} messages ({counts})")
    print(f"{cv['folds']}-fold stratified cross-validation:")
    _print_report(cv)
    thresholds = "  ".join(f"{k} {v:.2f}" for k, v in cv["thresholds"].items())
    print(f"suggested thresholds (in the model card): {thresholds}")


# -- evaluate -------------------------------------------------------------------------------------


def evaluate(
    ctx: typer.Context,
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[PATH[:LABEL]]...",
            help="Messages to evaluate the model on (.eml, directory, mbox, Maildir); LABEL is "
            "their true label (default other). Without paths: cross-validate on the corpus.",
            show_default=False,
        ),
    ] = None,
    corpus: CorpusOption = None,
    model: ModelOption = None,
    blind: Annotated[
        bool,
        typer.Option(
            "--blind",
            help="Measure the model on the frozen blind sets (classifiers/blind), reported "
            "apart from cross-validation. Write every look down in their README.",
        ),
    ] = False,
    blind_dir: Annotated[
        Path | None,
        typer.Option("--blind-dir", help="Blind sets' directory.", file_okay=False),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Measure the model: per-label precision, recall, F1, confusion matrix, review rate, and for
    `other` mail the share that would get an automatic reply (with and without header rules)."""
    settings = _settings(ctx)
    if blind or blind_dir is not None:
        results = _evaluate_blind(settings, model, blind_dir)
    elif paths:
        results = _evaluate_paths(settings, model, paths)
    else:
        results = {"cross_validation": _evaluate_corpus(settings, model, corpus)}
    if json_output:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return
    for title, result in results.items():
        print(f"== {title}")
        if "by_language" in result:
            _print_report(result)
            _print_languages(result["by_language"])
        elif "with_header_rules" in result:
            print("-- with header rules")
            _print_report(result["with_header_rules"])
            print("-- model only (header rules off)")
            _print_report(result["model_only"])
        else:
            _print_report(result)
        print()


def _evaluate_corpus(settings: Settings | None, model: Path | None, corpus: Path | None) -> Any:
    from triage.core.errors import ModelError
    from triage.decide.classify import load_classifier
    from triage.training import learn
    from triage.training.corpus import load_corpus, resolve_corpus_dir

    thresholds = _thresholds(settings)
    with user_errors():
        try:
            # Report with the thresholds in force: the card's (and settings') when a model loads.
            thresholds = load_classifier(_model_path(settings, model), thresholds).thresholds
        except ModelError as exc:
            if thresholds is None:
                _note(f"{exc}; choosing thresholds on the folds")
        data = load_corpus(resolve_corpus_dir(corpus))
        with _progress("cross-validating") as progress:
            result, _ = learn.cross_validation_report(data, thresholds, progress=progress)
    result["corpus_sha256"] = data.sha256()
    return result


def _evaluate_paths(settings: Settings | None, model: Path | None, paths: Sequence[str]) -> Any:
    from triage.training import learn
    from triage.training.corpus import load_folder, split_label

    classifier = _load_classifier(settings, model)
    results: dict[str, Any] = {}
    with user_errors():
        for spec in paths:
            path, label = split_label(spec, default="other")
            with _progress(f"reading {path}") as progress:
                data = load_folder(path, label, lambda n: progress(n, None))
            for problem in data.problems[:5]:
                _note(problem)
            if len(data.problems) > 5:
                _note(f"{path}: {len(data.problems) - 5} more messages skipped")
            results[f"{path} (true label {label}, {len(data)} messages)"] = {
                "with_header_rules": learn.evaluate_classifier(classifier, data, rules=True),
                "model_only": learn.evaluate_classifier(classifier, data, rules=False),
            }
    return results


def _evaluate_blind(settings: Settings | None, model: Path | None, root: Path | None) -> Any:
    from triage.training.blind import load_blind, resolve_blind_dir, score

    classifier = _load_classifier(settings, model)
    with user_errors():
        sets = load_blind(resolve_blind_dir(root))
    return {f"blind set {b.name} ({len(b.corpus)} messages)": score(classifier, b) for b in sets}


def _print_languages(rows: Mapping[str, Mapping[str, Any]]) -> None:
    head = ("language", "messages", "correct", "hot lost", "review", "other answered")
    print(f"{head[0]:<9} {head[1]:>8} {head[2]:>8} {head[3]:>9} {head[4]:>7} {head[5]:>15}")
    for language, r in rows.items():
        print(
            f"{language:<9} {r['messages']:>8} {_pct(r['correct']):>8} "
            f"{_pct(r['hot_leads_lost']):>9} {_pct(r['review_rate']):>7} "
            f"{_pct(r['other_answered']):>15}"
        )


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _print_report(r: Mapping[str, Any]) -> None:
    """A report of `learn.report` as aligned text tables."""
    from triage.core.models import DECISIONS, LABELS

    present = [lb for lb in LABELS if r["labels"][lb]["support"]]
    print(f"{'label':<10} {'precision':>9} {'recall':>7} {'F1':>7} {'support':>8}")
    for lb in LABELS:
        s = r["labels"][lb]
        print(
            f"{lb:<10} {_pct(s['precision']):>9} {_pct(s['recall']):>7} {_pct(s['f1']):>7} "
            f"{s['support']:>8}"
        )
    print(f"accuracy {_pct(r['accuracy'])}, macro-F1 {_pct(r['macro_f1'])}")
    print("confusion (rows: true label, columns: most probable label)")
    print(f"{'':<10}" + "".join(f"{lb:>10}" for lb in LABELS))
    for t in present:
        print(f"{t:<10}" + "".join(f"{r['confusion'][t][p]:>10}" for p in LABELS))
    print("decisions (rows: true label, columns: decision after thresholds)")
    print(f"{'':<10}" + "".join(f"{d:>10}" for d in DECISIONS))
    for t in present:
        print(f"{t:<10}" + "".join(f"{r['decisions'][t][d]:>10}" for d in DECISIONS))
    line = f"review rate {_pct(r['review_rate'])}"
    if r["sales_recall"] is not None:
        line += f", sales decided sales {_pct(r['sales_recall'])}"
        line += f", sales missed (decided marketing/other) {_pct(r['sales_missed'])}"
    if r["other_auto_reply_rate"] is not None:
        line += ", other mail auto-replied (decided sales/marketing) "
        line += _pct(r["other_auto_reply_rate"])
    if "rule_decided" in r:
        line += f", decided by header rules {r['rule_decided']}"
    print(line)


# -- classify -------------------------------------------------------------------------------------


def classify(
    ctx: typer.Context,
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="PATH...", help="Messages: .eml files, directories, mbox files, Maildirs."
        ),
    ],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per message per line.")
    ] = False,
    model: ModelOption = None,
) -> None:
    """Classify messages and print one line per message, even for one that cannot be read.

    `may_reply` and `reasons` are the etiquette verdict for a message read from a file (no
    Return-Path needed; "addressed to us" only checked when a configuration names our
    addresses). Exits 0 when a line was printed for every message.
    """
    from triage.decide import guards
    from triage.ingest.sources import iter_sources

    settings = _settings(ctx)
    classifier = _load_classifier(settings, model)
    if settings is not None:
        context = guards.GuardContext.from_settings(
            settings.replies, None, require_return_path=False
        )
    else:
        context = guards.GuardContext(require_return_path=False, require_addressed_to_us=False)
    batch: list[SourceItem] = []
    try:
        for item in iter_sources(paths):
            batch.append(item)
            if len(batch) >= BATCH:
                _classify_batch(batch, classifier, context, json_output)
                batch = []
        _classify_batch(batch, classifier, context, json_output)
    except BrokenPipeError:
        # `triage classify … | head`: the reader has gone; stop quietly like other tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None


def verdict(msg: InboundMessage, context: GuardContext) -> Verdict:
    """The etiquette verdict printed by `classify` (may we reply, and every reason not to)."""
    from triage.decide import guards

    return guards.check(msg, context)


def _classify_batch(
    items: Sequence[SourceItem],
    classifier: Classifier,
    context: GuardContext,
    json_output: bool,
) -> None:
    from triage.parsing import parse

    parsed: list[tuple[SourceItem, InboundMessage | None, str | None]] = []
    for item in items:
        if item.raw is None:
            parsed.append((item, None, item.error or "unreadable"))
            continue
        try:
            msg = parse(item.raw)
        except Exception as exc:  # noqa: BLE001  # one bad message never stops the batch
            parsed.append((item, None, f"cannot parse: {type(exc).__name__}: {exc}"))
            continue
        fatal = [d for d in msg.defects if d in NOT_A_MESSAGE or d.startswith("parser error")]
        parsed.append((item, None, f"not a message: {fatal[0]}") if fatal else (item, msg, None))
    messages = [m for _, m, _ in parsed if m is not None]
    try:
        results: list[Classification | None] = list(classifier.classify_many(messages))
    except Exception:  # noqa: BLE001  # retry one by one so only the culprit fails
        results = [_classify_one(classifier, m) for m in messages]
    outcomes = iter(results)
    for item, message, parse_error in parsed:
        result = next(outcomes) if message is not None else None
        error = "classification failed" if message is not None and result is None else parse_error
        checked = verdict(message, context) if message is not None else None
        line = _line(item.path, message, result, checked, error)
        if json_output:
            print(json.dumps(line, ensure_ascii=False))
        else:
            print(_text_line(line))
    sys.stdout.flush()


def _classify_one(classifier: Classifier, msg: InboundMessage) -> Classification | None:
    try:
        return classifier.classify(msg)
    except Exception:  # noqa: BLE001  # reported on the message's own line
        return None


def _line(
    path: str,
    msg: InboundMessage | None,
    result: Classification | None,
    verdict_: Verdict | None,
    error: str | None,
) -> dict[str, Any]:
    """The JSON object printed for one message (label null when it could not be classified)."""
    contact = msg.contact if msg is not None else None
    return {
        "path": path,
        "message_id": msg.message_id if msg is not None else None,
        "label": result.label if result else None,
        "confidence": round(result.confidence, 4) if result else None,
        "probabilities": (
            {k: round(v, 4) for k, v in result.probabilities.items()} if result else {}
        ),
        # Unreadable mail is never auto-answered: it goes to a person.
        "review": result.review if result else True,
        "may_reply": bool(verdict_.may_reply) if verdict_ and result else False,
        "reasons": list(verdict_.reasons) if verdict_ else [],
        # Whom a reply would go to, whether our server authenticated the sender, whether the
        # reply may repeat what the sender wrote, and why (docs/security.md).
        "reply_to": (
            verdict_.destination.email if verdict_ and verdict_.destination is not None else None
        ),
        "verified": bool(verdict_.verified) if verdict_ else False,
        "reflect": bool(verdict_.reflect) if verdict_ else False,
        "notes": list(verdict_.notes) if verdict_ else [],
        "contact": {
            "name": contact.name if contact else "",
            "email": contact.email if contact else "",
            "company": contact.company if contact else "",
            "phone": contact.phone if contact else "",
        },
        "explanation": list(result.explanation) if result else [],
        "error": error,
    }


def _text_line(line: Mapping[str, Any]) -> str:
    if line["error"]:
        return f"{line['path']}\terror\t{line['error']}"
    decision = "review" if line["review"] else line["label"]
    reply = "may reply" if line["may_reply"] else "no reply: " + "; ".join(line["reasons"])
    why = ", ".join(line["explanation"])
    return f"{line['path']}\t{decision}\t{line['label']} {line['confidence']:.2f}\t{reply}\t{why}"
