"""How results are shown: a rich table for the terminal and the ROC curve as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def verification_table(summary: dict, title: str = "verification"):
    """A rich Table of the headline figures (accuracy as mean ± std over folds, in %)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(
        "accuracy", f"{100 * summary['accuracy']:.2f}% ± {100 * summary['accuracy_std']:.2f}"
    )
    table.add_row("AUC", f"{summary['auc']:.4f}")
    table.add_row("EER", f"{100 * summary['eer']:.2f}%")
    table.add_row("threshold (cosine)", f"{summary['threshold']:.4f}")
    unresolved = False
    for far, tar in summary["tar_at_far"].items():
        below_resolution = float(far) < summary.get("far_resolution", 0.0)
        unresolved |= below_resolution
        table.add_row(f"TAR @ FAR={far}" + ("*" if below_resolution else ""), f"{100 * tar:.2f}%")
    if unresolved:
        table.caption = "* fewer than 1/FAR different pairs: the rate at zero false accepts"
    table.add_row("protocol", summary["protocol"])
    table.add_row(
        "pairs scored", f"{summary['pairs']} of {summary.get('pairs_listed', summary['pairs'])}"
    )
    table.add_row("skipped pairs", str(summary.get("skipped_pairs", 0)))
    return table


def figures_table(summary: dict, title: str):
    """A rich Table of every scalar figure of a summary (clustering, identification)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            continue
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


def write_roc_png(
    fpr: np.ndarray,
    tpr: np.ndarray,
    path: str | Path,
    title: str = "ROC",
    summary: dict | None = None,
) -> Path:
    """TAR against FAR on a log FAR axis (where face verification is read), plus a linear inset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, (log_axis, linear_axis) = plt.subplots(1, 2, figsize=(10, 4.2))
    positive = fpr > 0
    log_axis.plot(fpr[positive], tpr[positive], lw=1.5)
    log_axis.set_xscale("log")
    log_axis.set_xlabel("false accept rate (log)")
    log_axis.set_ylabel("true accept rate")
    log_axis.grid(True, which="both", alpha=0.3)
    linear_axis.plot(fpr, tpr, lw=1.5)
    linear_axis.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    linear_axis.set_xlabel("false accept rate")
    linear_axis.set_ylabel("true accept rate")
    linear_axis.grid(True, alpha=0.3)
    if summary is not None:
        linear_axis.set_title(
            f"acc {100 * summary['accuracy']:.2f}%  AUC {summary['auc']:.4f}  EER {100 * summary['eer']:.2f}%",
            fontsize=9,
        )
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
