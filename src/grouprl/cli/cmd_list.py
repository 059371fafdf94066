"""``grouprl list`` and ``grouprl explain NAME``: what is registered, and each method worked live."""

from __future__ import annotations

import inspect
import re
import sys

import torch
import typer
from rich.console import Console
from rich.table import Table

from .app import app

_ARXIV = re.compile(r"arXiv[: ]\s*(\d{4}\.\d{4,5})")
# constructor arguments the trainer fills itself (not options a user sets)
_NOT_OPTIONS = {"self", "cfg", "model", "num_prompts", "seed", "prompt_groups"}


def _doc(obj) -> str:
    return inspect.cleandoc(getattr(obj, "__doc__", None) or "")


def _paper(doc: str, obj=None) -> str:
    """The first arXiv id of ``doc``; else the one arXiv id its module's docstring cites, if only one."""
    m = _ARXIV.search(doc)
    if m:
        return f"arXiv:{m.group(1)}"
    ids = set(_ARXIV.findall(_doc(sys.modules.get(getattr(obj, "__module__", ""), None))))
    return f"arXiv:{ids.pop()}" if len(ids) == 1 else "-"


def _keywords(obj) -> dict:
    """The keyword options of a class's ``__init__`` or a factory, with their defaults."""
    fn = obj.__init__ if inspect.isclass(obj) else obj
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if p.name not in _NOT_OPTIONS
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty}


def _kinds() -> dict:
    """Registries other than estimators and losses: kind -> (title, registry)."""
    from ..envs import ENVS
    from ..recipes import RECIPES
    from ..sampling import SAMPLERS
    from ..tasks import TASKS
    from ..train.credit import CREDITS

    return {"recipe": ("Recipes (`method=NAME`)", RECIPES), "sampler": ("Samplers (`sampler=NAME`)", SAMPLERS),
            "credit hook": ("Credit hooks (`credit=NAME`)", CREDITS), "task": ("Tasks (`task=NAME`)", TASKS),
            "environment": ("Environments (`env=NAME`)", ENVS)}


def _first_sentence(doc: str, limit: int = 160) -> str:
    """The docstring's first sentence (of its first paragraph), at most ``limit`` characters."""
    para = " ".join(doc.split("\n\n", 1)[0].split())
    if not para:
        return "-"
    m = re.search(r"(?<!e\.g)(?<!i\.e)[.!?](\s|$)", para)
    first = para[: m.end()].strip() if m else para
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def _rows(kind: str, reg) -> list[tuple[str, ...]]:
    if kind == "recipe":
        return [(n, r.paper.split(" §")[0].rsplit(", ", 1)[-1], r.changes) for n, r in reg.items()]
    out = []
    for n, obj in reg.items():
        doc = _doc(obj)
        out.append((n, _paper(doc, obj), _first_sentence(doc)))
    return out


def _example_batch(example: dict):
    from ..advantages.registry import example_batch

    return example_batch(example)


@app.command("list")
def list_methods(
    markdown: bool = typer.Option(False, "--markdown", help="print Markdown tables (for docs)"),
) -> None:
    """List the registered estimators, losses, recipes, samplers, credit hooks, tasks, environments and shipped warm starts."""
    from .. import warmstarts
    from ..advantages import ESTIMATORS
    from ..losses import LOSSES

    est = [(n, i.level, i.paper, ", ".join(i.needs)) for n, i in ESTIMATORS.items() if not n.startswith("_")]
    los = [(n, i.level, i.paper) for n, i in LOSSES.items()]
    warm = [(w.name, w.task, w.model, f"{w.manifest['heldout_greedy_acc']:.3f} (n={w.manifest['heldout_n']})",
             w.manifest["command"]) for w in warmstarts.shipped().values()]
    warm_cols = ("name", "task", "model", "held-out greedy acc", "built by")
    others = [(title, _rows(kind, reg)) for kind, (title, reg) in _kinds().items()]
    other_cols = ("name", "paper", "what it is")
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
        for title, rows in others:
            print(f"\n{title} ({len(rows)})\n")
            print("| " + " | ".join(other_cols) + " |\n|" + "---|" * len(other_cols))
            for row in rows:
                print("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
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
    for title, rows in others:
        t = Table(title=f"{title} ({len(rows)})")
        t.add_column("name", no_wrap=True)
        for col in other_cols[1:]:
            t.add_column(col)
        for row in rows:
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


# kinds in the order ``explain NAME`` looks them up; ``explain KIND:NAME`` picks one (dapo is both an
# estimator and a recipe: ``grouprl explain recipe:dapo``)
_PREFIX = {"estimator": "advantage estimator", "loss": "policy loss", "recipe": "recipe", "sampler": "sampler",
           "credit": "credit hook", "task": "task", "env": "environment"}


@app.command()
def explain(name: str = typer.Argument(..., help="any name `grouprl list` shows, or KIND:NAME "
                                       "(estimator, loss, recipe, sampler, credit, task, env)")) -> None:
    """Show a method's equation and paper, its defaults, and its worked example computed live; for a
    recipe, sampler, credit hook, task or environment its summary, paper, options and (recipe) config."""
    from ..advantages import ESTIMATORS
    from ..core import suggest
    from ..losses import LOSSES

    console = Console()
    regs = {"advantage estimator": ESTIMATORS, "policy loss": LOSSES}
    regs.update({kind: reg for kind, (_, reg) in _kinds().items()})
    prefix, _, rest = name.partition(":")
    if rest and prefix in _PREFIX:
        kinds, name = [_PREFIX[prefix]], rest
    else:
        kinds = [k for k, reg in regs.items() if name in reg]
    kinds = [k for k in kinds if name in regs[k]]
    if not kinds:
        known = [n for reg in regs.values() for n in reg if not n.startswith("_")]
        console.print(f"[red]unknown method {name!r}[/]: {suggest(name, known)}")
        raise typer.Exit(2)
    kind = kinds[0]
    if kind == "advantage estimator":
        _explain_estimator(console, name)
    elif kind == "policy loss":
        _explain_loss(console, name)
    else:
        _explain_other(console, kind, name, regs[kind][name])
    inv = {v: k for k, v in _PREFIX.items()}
    for other in kinds[1:]:
        console.print(f"\n{name!r} is also a {other}: grouprl explain {inv[other]}:{name}")


def _header(console: Console, name: str, kind: str, info, extra: str = "") -> None:
    """The title, paper, docstring and defaults of a registered estimator or loss."""
    console.rule(f"[bold]{name}[/] — {kind}")
    console.print(f"paper: {info.paper or '-'}\n{extra}")
    console.print(info.doc + "\n")
    console.print("defaults: " + (", ".join(f"{k}={v!r}" for k, v in info.defaults.items()) or "none"))


def _explain_estimator(console: Console, name: str) -> None:
    from ..advantages import ESTIMATORS, compute_advantages

    info = ESTIMATORS[name]
    _header(console, name, f"advantage estimator ({info.level})", info, f"needs: {', '.join(info.needs)}\n")
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


def _explain_loss(console: Console, name: str) -> None:
    from ..losses import LOSSES, run_example

    info = LOSSES[name]
    _header(console, name, f"policy loss ({info.level})", info)
    if info.example:
        loss, metrics = run_example(name)
        console.print("\n[bold]worked example[/] (computed now)")
        for k, v in info.example.items():
            console.print(f"  {k} = {v}")
        console.print(f"  loss = {loss.item():+.4f}")
        for k, v in metrics.items():
            console.print(f"  {k} = {_fmt(v.tolist())}")


_DECLARED = (("needs", "reads"), ("carries", "carries from step to step (checkpointed)"),
             ("provides", "adds the batch fields"))


def _explain_other(console: Console, kind: str, name: str, obj) -> None:
    console.rule(f"[bold]{name}[/] — {kind}")
    if kind == "recipe":
        from ..train.config import build_config

        console.print(f"paper: {obj.paper}\n")
        console.print(obj.changes + "\n")
        if obj.note:
            console.print(f"note: {obj.note}\n")
        console.print("fields: " + ", ".join(f"{k}={v!r}" for k, v in obj.fields.items()))
        cfg = build_config({"method": name})
        console.print(f"\n[bold]expanded config[/] (`grouprl train method={name}`; any field set explicitly overrides it)")
        for k, v in cfg.model_dump().items():
            console.print(f"  {k}: {v!r}")
        return
    doc = _doc(obj)
    console.print(f"paper: {_paper(doc, obj)}\n")
    console.print((doc or "-") + "\n")
    kw = _keywords(obj)
    console.print("keywords: " + (", ".join(f"{k}={v!r}" for k, v in kw.items()) or "none"))
    for attr, what in _DECLARED:  # what a sampler or credit hook declares (its registry entry's data)
        value = getattr(obj, attr, None)
        if isinstance(value, tuple):
            console.print(f"{what}: " + (", ".join(value) or "none"))
