"""The plots of the reports: training loss curves, ROC curves and online AUC by day.

Each takes the numbers and a path; matplotlib runs headless (Agg).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(
    history: list[dict[str, float]], path: Path, title: str, ylabel: str = "triplet loss (Eq. 15)"
) -> None:
    """Training and validation loss per epoch (``history``: epoch, train_loss, val_loss)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_online(by_day: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    labels = {
        "online": "online (effects refitted, histories followed)",
        "history_only": "histories followed, effects frozen",
        "frozen": "frozen at the test start",
    }
    fig, ax = plt.subplots(figsize=(7, 4))
    days = [b["day"] for b in by_day]
    for key, label in labels.items():
        if key in by_day[0]:
            ax.plot(days, [b[key] for b in by_day], marker="o", label=label)
    ax.set_xlabel("day of the test period")
    ax.set_ylabel("AUC of that day's impressions")
    ax.set_title("GLMix watch probability, progressive validation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(
    y: np.ndarray,
    scores: dict[str, np.ndarray],
    cold: np.ndarray,
    oracle: np.ndarray | None,
    path: Path,
) -> None:
    from sklearn.metrics import roc_curve

    plt = _pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, subset, title in (
        (axes[0], np.ones_like(cold), "all test impressions"),
        (axes[1], cold, "cold-start videos"),
    ):
        curves = dict(scores)
        if oracle is not None:
            curves["oracle"] = oracle
        for name, s in curves.items():
            ok = subset & ~np.isnan(s)
            if ok.sum() == 0 or len(set(y[ok].tolist())) < 2:
                continue
            fpr, tpr, _ = roc_curve(y[ok], s[ok])
            ax.plot(fpr, tpr, label=name, linestyle="--" if name == "oracle" else "-")
        ax.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
        ax.set_title(title)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
