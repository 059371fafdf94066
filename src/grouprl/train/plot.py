"""``grouprl plot RUN``: PNG learning curves from a run's metrics.jsonl and eval.jsonl (matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

from .logging import read_jsonl

__all__ = ["plot_run", "warm_start_note"]

_TRAIN_PANELS = [
    ("frac_constant_groups", "fraction of constant groups"),
    ("entropy", "token entropy"),
    ("grad_norm", "grad norm"),
    ("response_len", "response length (tokens)"),
]


def warm_start_note(run: Path) -> str | None:
    """A warning line when the run's SFT warm start missed its target (None otherwise)."""
    from .config import ConfigError, read_config_file

    log = read_jsonl(run / "sft" / "sft_log.jsonl")
    checks = [r["val_acc"] for r in log if "val_acc" in r]
    try:
        target = read_config_file(run / "config.yaml").get("sft_target_acc") or 0.0
    except (OSError, ConfigError):
        return None
    if checks and target and checks[-1] < target:
        return f"warm start missed its SFT target: validation acc {checks[-1]:.3f} < {target} after {len(log)} steps"
    return None


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``RUN/curves.png`` (or ``out``): held-out greedy and sampled accuracy / pass@k, training
    accuracy (and the reward where it differs from accuracy) and the main training curves; the
    title says when the SFT warm start missed its target."""
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
        n = evals[-1].get("n")
        ax.plot(xs, [e["acc"] for e in evals], "o-", label="greedy acc" + (f" (n={n})" if n else ""))
        if any("sampled_acc" in e for e in evals):
            ax.plot(xs, [e.get("sampled_acc") for e in evals], "s-", ms=3, label="sampled acc")
        for key in sorted({k for e in evals for k in e if k.startswith("pass@") or k.startswith("acc/")}):
            ax.plot(xs, [e.get(key) for e in evals], ".--", label=key)
        ax.legend(fontsize=7)
    ax.set_title("held-out evaluation (step 0 = warm start)")
    ax.set_xlabel("RL step")
    ax = axes[0, 1]
    if metrics:
        xs = [m["step"] for m in metrics]
        ax.plot(xs, [m["acc"] for m in metrics], label="train acc (sampled)")
        if any(abs(m["reward"] - m["acc"]) > 1e-9 for m in metrics):  # shaped or non-binary rewards
            ax.plot(xs, [m["reward"] for m in metrics], label="train reward (mean)")
        if any("kl" in m for m in metrics):
            ax2 = ax.twinx()
            ax2.plot(xs, [m.get("kl") for m in metrics], color="gray", alpha=0.6, label="kl")
            ax2.set_ylabel("kl")
        ax.legend(fontsize=7)
    ax.set_title("training rollouts")
    for ax, (key, title) in zip(list(axes[0, 2:]) + list(axes[1]), _TRAIN_PANELS):
        if metrics:
            ax.plot([m["step"] for m in metrics], [m.get(key) for m in metrics])
        ax.set_title(title)
        ax.set_xlabel("RL step")
    note = warm_start_note(run)
    fig.suptitle(str(run.name) + (f"\n{note}" if note else ""), color="firebrick" if note else "black")
    fig.tight_layout()
    path = Path(out) if out is not None else run / "curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
