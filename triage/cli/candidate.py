"""`triage model compare|promote|rollback`: the guarded end of the learning loop.

`triage train --with-corrections` writes a candidate beside the live model; `compare` shows what
changing to it would change, `promote` puts it live unless it does harm (one line, exit 1), and
`rollback` swaps back the model `promote` replaced. The logic is in `triage.training.compare`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from triage.cli.common import EXIT_FAILURE, fail, user_errors
from triage.cli.model import JsonOption, ModelOption, _model_path, _settings, _thresholds
from triage.core.sanitize import strip_invisible

if TYPE_CHECKING:
    from triage.training.compare import ModelComparison

app = typer.Typer(
    help="Compare a candidate model with the live one, promote it, or roll back.",
    no_args_is_help=True,
)

CandidateOption = Annotated[
    Path | None,
    typer.Option(
        "--candidate",
        help="Candidate model file (default: <live stem>.candidate.skops beside the live model).",
        dir_okay=False,
    ),
]
StoreOption = Annotated[
    Path | None,
    typer.Option("--store", help="Store of handled mail (default: store.path).", dir_okay=False),
]
WeeksOption = Annotated[
    int, typer.Option("--weeks", help="Compare over the mail stored in the last N weeks.", min=1)
]


def _run(
    ctx: typer.Context, model: Path | None, candidate: Path | None, store: Path | None, weeks: int
) -> tuple[Path, Path, ModelComparison]:
    from triage.core.settings import StoreSettings
    from triage.training import compare

    settings = _settings(ctx)
    live = _model_path(settings, model)
    chosen = candidate or compare.candidate_path(live)
    # --store names a SQLite file; otherwise the configured store (file or server).
    source = (
        StoreSettings(path=store) if store else (settings.store if settings else StoreSettings())
    )
    with user_errors():
        result = compare.compare(
            live,
            chosen,
            source,
            weeks=weeks,
            thresholds=_thresholds(settings),
            spam_headers=settings.classifier.trusted_spam_headers if settings else (),
        )
    return live, chosen, result


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _print(result: ModelComparison) -> None:
    from triage.training.compare import AUTO_REPLY

    print(f"live {result.live_version}  vs  candidate {result.candidate_version}")
    for note in result.notes:
        print(f"note: {note}")
    rows: list[tuple[str, str]] = [
        ("macro_f1", "macro-F1"),
        ("sales_missed", "hot leads lost"),
        ("review_rate", "review rate"),
        ("other_auto_reply_rate", "other answered"),
    ]
    for r in result.blind:
        print(f"\nblind set {r.name} ({r.size} messages)")
        print(f"  {'':<18} {'live':>8} {'candidate':>10}")
        for key, name in rows:
            print(f"  {name:<18} {_pct(r.live[key]):>8} {_pct(r.candidate[key]):>10}")
    print(
        f"\nstored mail, last {result.weeks} weeks ({result.stored} messages decided by the model;"
        f" {result.rule_decided} decided by a header rule left out)"
    )
    print(f"  {'':<18} {'live':>8} {'candidate':>10}")
    for decision in result.live_counts:
        live_n, cand_n = result.live_counts[decision], result.candidate_counts[decision]
        print(f"  {decision:<18} {live_n:>8} {cand_n:>10}")
    if result.flips:
        print(f"\n{len(result.flips)} stored messages would change:")
        for f in result.flips:
            if f.candidate in AUTO_REPLY and f.live not in AUTO_REPLY:
                mark = " (new auto-reply)"
            elif f.live in AUTO_REPLY and f.candidate not in AUTO_REPLY:
                mark = " (no auto-reply any more)"
            else:
                mark = ""
            subject = " ".join(strip_invisible(f.subject).split())[:60] or "(no subject)"
            print(f"  {f.row_id:>6}  {f.live} -> {f.candidate}{mark}  {subject}")
    else:
        print("\nno stored message would change its decision")
    print(
        f"newly auto-replied: {result.newly_auto_replied}; "
        f"no longer auto-replied: {result.no_longer_auto_replied}"
    )


@app.command("compare")
def compare(
    ctx: typer.Context,
    candidate: CandidateOption = None,
    weeks: WeeksOption = 4,
    model: ModelOption = None,
    store: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the live model and the candidate side by side over the blind sets and the recent
    stored mail; list every stored message whose decision would change."""
    _live, _chosen, result = _run(ctx, model, candidate, store, weeks)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
        return
    _print(result)
    refusals = result.refusals()
    print(
        "promote would refuse: " + "; ".join(refusals)
        if refusals
        else "promote would accept this candidate"
    )


@app.command("promote")
def promote(
    ctx: typer.Context,
    candidate: CandidateOption = None,
    weeks: WeeksOption = 4,
    model: ModelOption = None,
    store: StoreOption = None,
    without_blind: Annotated[
        bool,
        typer.Option(
            "--without-blind",
            help="Promote even when no blind set can be read (an installed triage has none): "
            "then only the stored-mail rule guards the switch.",
        ),
    ] = False,
) -> None:
    """Make the candidate the live model, unless it is worse on a blind set (macro-F1, hot leads
    lost, other answered) or would newly auto-reply to more stored mail than it stops answering.
    The live pair is kept as <stem>.previous.*; a running daemon picks the new model up."""
    from triage.training.compare import promote as install

    live, chosen, result = _run(ctx, model, candidate, store, weeks)
    refusals = result.refusals(require_blind=not without_blind)
    if refusals:
        fail(f"candidate {chosen} not promoted: {'; '.join(refusals)}", EXIT_FAILURE)
    for note in result.notes:
        print(f"note: {note}")
    with user_errors():
        done = install(live, chosen)
    kept = f"; the previous model is kept as {done.previous}" if done.previous else ""
    print(f"promoted {chosen} to {live} ({done.version}){kept}")


@app.command("rollback")
def rollback(ctx: typer.Context, model: ModelOption = None) -> None:
    """Swap the live model and the one `promote` replaced (<stem>.previous.*)."""
    from triage.training.compare import rollback as swap

    live = _model_path(_settings(ctx), model)
    with user_errors():
        done = swap(live)
    print(f"{live} is {done.version} again; the replaced model is kept as {done.previous}")
