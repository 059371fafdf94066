"""``grouprl plot RUN``: PNG learning curves from a run's metrics.jsonl and eval.jsonl (matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

from .logging import read_jsonl

__all__ = ["plot_run"]

_TRAIN_PANELS = [
    ("reward", "train reward (mean)"),
    ("frac_constant_groups", "fraction of constant groups"),
    ("entropy", "token entropy"),
    ("grad_norm", "grad norm"),
]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``RUN/curves.png`` (or ``out``): eval accuracy / pass@k and the main training curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    metrics, evals = read_jsonl(run / "metrics.jsonl"), read_jsonl(run / "eval.jsonl")
    if not metrics and not evals:
        raise FileNotFoundError(f"{run}: no metrics.jsonl or eval.jsonl with rows; is it a grouprl run directory?")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    ax = axes[0, 0]
    if evals:
        xs = [e["step"] for e in evals]
        ax.plot(xs, [e["acc"] for e in evals], "o-", label="greedy acc")
        for key in sorted({k for e in evals for k in e if k.startswith("pass@") or k.startswith("acc/")}):
            ax.plot(xs, [e.get(key) for e in evals], ".--", label=key)
        ax.legend(fontsize=7)
    ax.set_title("held-out evaluation")
    ax.set_xlabel("RL step")
    ax = axes[0, 1]
    if metrics:
        xs = [m["step"] for m in metrics]
        ax.plot(xs, [m["acc"] for m in metrics], label="train acc (sampled)")
        if any("kl" in m for m in metrics):
            ax2 = ax.twinx()
            ax2.plot(xs, [m.get("kl") for m in metrics], color="gray", alpha=0.6, label="kl")
            ax2.set_ylabel("kl")
        ax.legend(fontsize=7)
    ax.set_title("train accuracy")
    for ax, (key, title) in zip(list(axes[0, 2:]) + list(axes[1]), _TRAIN_PANELS):
        if metrics:
            ax.plot([m["step"] for m in metrics], [m.get(key) for m in metrics])
        ax.set_title(title)
        ax.set_xlabel("RL step")
    fig.suptitle(str(run.name))
    fig.tight_layout()
    path = Path(out) if out is not None else run / "curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
