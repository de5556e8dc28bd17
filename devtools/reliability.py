"""Draw the model card's reliability diagram: `python -m devtools.reliability [CARD] [PNG]`.

Reads the calibration bins that `triage train` wrote into the card (out-of-fold probabilities of
cross-validation on the corpus) and draws, per label, the share of messages that truly had the
label against the probability the model gave, beside the diagonal of perfect calibration, with
the expected calibration error (ECE) in the legend. Needs matplotlib (the `dev` extra).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

CARD = Path("classifiers/model-card.json")
PNG = Path("classifiers/reliability.png")
COLOURS = {"sales": "#c0392b", "marketing": "#2471a3", "other": "#7f8c8d"}


def draw(card_path: Path, png_path: Path) -> dict[str, float]:
    """Write the diagram of the card at `card_path` to `png_path`; return the ECE per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    card = json.loads(card_path.read_text(encoding="utf-8"))
    cv = card["evaluation"]["cross_validation"]
    calibration = cv.get("calibration")
    if not calibration:
        raise SystemExit(f"{card_path}: no calibration figures; retrain with this triage")
    figure, axes = plt.subplots(figsize=(6.4, 5.2), dpi=100)
    axes.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", label="perfectly calibrated")
    eces = {}
    for label, figures in calibration.items():
        bins = figures["bins"]
        eces[label] = figures["ece"]
        axes.plot(
            [b["confidence"] for b in bins],
            [b["frequency"] for b in bins],
            marker="o",
            color=COLOURS.get(label, "black"),
            label=f"{label} (ECE {figures['ece']:.3f})",
        )
    total = sum(card["training_size"].values())
    axes.set_xlabel("probability the model gave the label (mean per bin)")
    axes.set_ylabel("share of messages that had the label")
    axes.set_title(
        f"Reliability, {cv.get('folds', 5)}-fold cross-validation on {total} messages\n"
        f"model {card['created'][:10]}, {card['model_sha256'][:12]}",
        fontsize=10,
    )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=9)
    figure.tight_layout()
    figure.savefig(png_path, metadata={"Software": None})
    plt.close(figure)
    return eces


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: optional card and PNG paths."""
    args = list(sys.argv[1:] if argv is None else argv)
    card = Path(args[0]) if args else CARD
    png = Path(args[1]) if len(args) > 1 else PNG
    eces = draw(card, png)
    print(f"{png}: " + ", ".join(f"{k} ECE {v:.3f}" for k, v in eces.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
