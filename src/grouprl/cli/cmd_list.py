"""``grouprl list`` and ``grouprl explain NAME``: what is registered, and each method worked live."""

from __future__ import annotations

import torch
import typer
from rich.console import Console
from rich.table import Table

from .app import app


def _example_batch(example: dict):
    from ..advantages.registry import example_batch

    return example_batch(example)


@app.command("list")
def list_methods(
    markdown: bool = typer.Option(False, "--markdown", help="print Markdown tables (for docs)"),
) -> None:
    """List the registered advantage estimators and policy losses, and the warm starts shipped with grouprl."""
    from .. import warmstarts
    from ..advantages import ESTIMATORS
    from ..losses import LOSSES

    est = [(n, i.level, i.paper, ", ".join(i.needs)) for n, i in ESTIMATORS.items() if not n.startswith("_")]
    los = [(n, i.level, i.paper) for n, i in LOSSES.items()]
    warm = [(w.name, w.task, w.model, f"{w.manifest['heldout_greedy_acc']:.3f} (n={w.manifest['heldout_n']})",
             w.manifest["command"]) for w in warmstarts.shipped().values()]
    warm_cols = ("name", "task", "model", "held-out greedy acc", "built by")
    if markdown:
        print(f"Advantage estimators ({len(est)})\n")
        print("| name | level | paper | batch fields needed |\n|---|---|---|---|")
        for row in est:
            print("| " + " | ".join(row) + " |")
        print(f"\nPolicy losses ({len(los)})\n")
        print("| name | level | paper |\n|---|---|---|")
        for row in los:
            print("| " + " | ".join(row) + " |")
        print(f"\nShipped warm starts ({len(warm)})\n")
        print("| " + " | ".join(warm_cols) + " |\n|" + "---|" * len(warm_cols))
        for row in warm:
            print("| " + " | ".join(row) + " |")
        return
    console = Console()
    t = Table(title=f"Advantage estimators ({len(est)})")
    t.add_column("name", no_wrap=True)
    for col in ("level", "paper", "batch fields needed"):
        t.add_column(col)
    for row in est:
        t.add_row(*row)
    console.print(t)
    t = Table(title=f"Policy losses ({len(los)})")
    t.add_column("name", no_wrap=True)
    for col in ("level", "paper"):
        t.add_column(col)
    for row in los:
        t.add_row(*row)
    console.print(t)
    t = Table(title=f"Shipped warm starts ({len(warm)}): `warm_start=auto` starts RL from the one that fits")
    for col in warm_cols:
        t.add_column(col)
    for row in warm:
        t.add_row(*row)
    console.print(t)


def _fmt(x) -> str:
    if isinstance(x, torch.Tensor):
        x = x.tolist()
    if isinstance(x, float):
        return f"{x:+.4f}"
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    return str(x)


@app.command()
def explain(name: str = typer.Argument(..., help="an estimator or loss name, see `grouprl list`")) -> None:
    """Show a method's equation and paper, its defaults, and its worked example computed live."""
    from ..advantages import ESTIMATORS, compute_advantages
    from ..core import suggest
    from ..losses import LOSSES

    console = Console()
    if name in ESTIMATORS:
        info = ESTIMATORS[name]
        console.rule(f"[bold]{name}[/] — advantage estimator ({info.level})")
        console.print(f"paper: {info.paper or '-'}\nneeds: {', '.join(info.needs)}\n")
        console.print(info.doc + "\n")
        console.print("defaults: " + (", ".join(f"{k}={v!r}" for k, v in info.defaults.items()) or "none"))
        if info.example:
            batch, kwargs = _example_batch(info.example)
            adv = compute_advantages(name, batch, **kwargs)
            console.print("\n[bold]worked example[/] (computed now)")
            for k, v in info.example.items():
                console.print(f"  {k} = {v}")
            per_row = adv.sum(1) / batch.mask.sum(1).clamp_min(1) if adv.shape[1] > 1 else adv[:, 0]
            if adv.shape[1] == 1:
                console.print(f"  advantage = {_fmt(per_row)}")
            else:
                console.print("  advantage (B, T) =")
                for row in adv:
                    console.print("    " + _fmt(row))
        return
    if name in LOSSES:
        from ..losses import run_example

        info = LOSSES[name]
        console.rule(f"[bold]{name}[/] — policy loss ({info.level})")
        console.print(f"paper: {info.paper or '-'}\n")
        console.print(info.doc + "\n")
        console.print("defaults: " + (", ".join(f"{k}={v!r}" for k, v in info.defaults.items()) or "none"))
        if info.example:
            loss, metrics = run_example(name)
            console.print("\n[bold]worked example[/] (computed now)")
            for k, v in info.example.items():
                console.print(f"  {k} = {v}")
            console.print(f"  loss = {loss.item():+.4f}")
            for k, v in metrics.items():
                console.print(f"  {k} = {_fmt(v.tolist())}")
        return
    console.print(f"[red]unknown method {name!r}[/]: {suggest(name, list(ESTIMATORS) + list(LOSSES))}")
    raise typer.Exit(2)
