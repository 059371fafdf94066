"""``grouprl fit-rewards``: MaxMin-RLHF's EM over user-labelled preference pairs (arXiv:2402.08925)."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .app import app


@app.command("fit-rewards")
def fit_rewards(
    data: Path = typer.Argument(..., help="preference pairs, JSONL: {\"user\", \"prompt\", \"chosen\", \"rejected\"} per line"),
    clusters: int = typer.Option(..., "--clusters", "-k", help="K, the number of user groups (reward models)"),
    out: Path = typer.Option(..., "--out", help="directory for reward_models.safetensors and manifest.json"),
    restarts: int = typer.Option(5, help="independent EM runs; the highest log-likelihood is kept"),
    seed: int = typer.Option(0, help="seed of the first restart (restart r uses seed + r)"),
    iters: int = typer.Option(50, help="maximum EM iterations per restart"),
    m_steps: int = typer.Option(200, help="gradient steps of each M-step"),
    lr: float = typer.Option(0.5, help="M-step learning rate (on standardised features)"),
    l2: float = typer.Option(1e-3, help="M-step L2 penalty on θ"),
    force: bool = typer.Option(False, help="overwrite reward models already in --out"),
) -> None:
    """Fit K reward models to users' preference pairs by MaxMin-RLHF's EM (hard assignment).

    Each user is assigned to the reward model that explains their comparisons best (Bradley–Terry);
    each model is refit on its users' comparisons; empty clusters are re-seeded; the best of
    --restarts runs is kept. The models are linear in response features (grouprl.rewards.preferences).
    Then: `grouprl train estimator=maxmin reward_models=OUT`.
    """
    from ..rewards.preferences import MANIFEST, PreferenceError, fit_preference_models, load_preferences

    console = Console()
    try:
        if clusters < 1:
            raise PreferenceError(f"--clusters {clusters}: pass K >= 1.")
        if restarts < 1:
            raise PreferenceError(f"--restarts {restarts}: pass at least 1.")
        if (out / MANIFEST).exists() and not force:
            raise PreferenceError(f"--out {out} already holds reward models; pass --force to overwrite or choose another --out.")
        prefs = load_preferences(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            models, fit = fit_preference_models(prefs, clusters, restarts=restarts, seed=seed, iters=iters,
                                                m_steps=m_steps, lr=lr, l2=l2)
        models.manifest["data"] = str(data)
        models.save(out)
    except PreferenceError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(code=2) from None
    man = models.manifest
    table = Table(title=f"{man['num_pairs']} pairs, {man['num_users']} users, K = {clusters}")
    table.add_column("cluster")
    table.add_column("users")
    table.add_column("weight")
    for name in man["feature_names"]:
        table.add_column(f"θ {name}")
    for k in range(clusters):
        table.add_row(str(k), str(man["cluster_users"][k]), f"{man['mixture_weights'][k]:.2f}",
                      *(f"{float(x):+.2f}" for x in models.theta[k]))
    console.print(table)
    console.print(f"log-likelihood {man['log_likelihood']:.2f} (best of {restarts} restarts: "
                  f"{', '.join(f'{x:.2f}' for x in man['restart_log_likelihoods'])}); "
                  f"{man['iterations']} EM iterations, converged: {man['converged']}, re-seeds: {man['reseeds']}")
    for w in caught:
        console.print(f"[bold yellow]warning:[/] {escape(str(w.message))}")
    console.print(f"[bold green]wrote[/] {out}; next: grouprl train estimator=maxmin reward_models={out}")
