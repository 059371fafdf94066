"""``grouprl train``, ``grouprl sft`` and ``grouprl plot``.

Config overrides: ``key=value``, ``--key value`` or ``--key=value`` for any field of
``grouprl.train.TrainConfig`` (dotted keys reach into dicts, ``estimator_kwargs.eps=1e-6``, and
sections, ``optim.lr=1e-5``; ``--help`` lists the fields by section);
``--config FILE`` loads a YAML file first; ``--resume RUN`` continues a run directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


import click
import typer
from rich.console import Console
from typer.core import TyperCommand

from .app import app

_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def _section_rows() -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    """(section, what it holds, [(key, default, description)]) for each section of TrainConfig."""
    from ..train.config import SECTIONS, TrainConfig

    out = []
    for name, sec in SECTIONS.items():
        rows = []
        for key in sec.fields:
            f = TrainConfig.model_fields[key]
            default = f.default_factory() if f.default_factory is not None else f.default
            rows.append((key, repr(default), f.description or ""))
        out.append((name, sec.doc, rows))
    return out


class _SectionedHelp(TyperCommand):
    """``--help`` that ends with the config keys, one panel per section of TrainConfig."""

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help(ctx, formatter)
        if self.rich_markup_mode is None:  # plain click help: sections as definition lists
            for name, doc, rows in _section_rows():
                with formatter.section(name):
                    formatter.write_text(doc)
                    formatter.write_dl([(f"{key}={default}", desc) for key, default, desc in rows])
            return
        from rich import box
        from rich.console import Group
        from rich.markup import escape
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        sections = _section_rows()
        key_width = max(len(key) for _, _, rows in sections for key, _, _ in rows)
        console = Console()
        for name, doc, rows in sections:
            table = Table(box=None, show_header=False, padding=(0, 1), expand=True)
            table.add_column(style="bold cyan", no_wrap=True, min_width=key_width)
            table.add_column(style="dim", overflow="fold", width=14)
            table.add_column(ratio=1)
            for key, default, desc in rows:
                table.add_row(key, escape(default), escape(desc))
            console.print(Panel(Group(Text(doc, style="italic"), table), title=f"[bold]{name}[/]",
                                title_align="left", border_style="dim", box=box.ROUNDED))


def _split_special(words: list[str], names: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """Pull ``--name VALUE`` / ``--name=VALUE`` for the given option names out of ``words``."""
    found: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        key = w[2:].split("=", 1)[0] if w.startswith("--") else None
        if key in names:
            if "=" in w:
                found[key] = w.split("=", 1)[1]
            elif i + 1 < len(words):
                found[key] = words[i + 1]
                i += 1
            else:
                raise typer.BadParameter(f"--{key} needs a value")
        else:
            rest.append(w)
        i += 1
    return found, rest


def _fail(console: Console, exc: Exception) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(exc))}")  # a message's [a, b] is text, not markup
    raise typer.Exit(code=2)


@app.command(cls=_SectionedHelp, context_settings=_EXTRA)
def train(ctx: typer.Context) -> None:
    """Group RL on a task: SFT warm start (unless init=PATH), then RL; writes runs/NAME/.

    Usage: grouprl train (--config FILE) (--resume RUN) key=value | --key value ...

    Examples: `grouprl train`, `grouprl train estimator=dr_grpo agg=seq-mean-token-sum-norm steps=50`,
    `grouprl train optim.lr=3e-5`, `grouprl train --resume runs/NAME`.

    Keys are the fields below, grouped by section: `lr=1e-5` and `optim.lr=1e-5` set the same field;
    a --config file is flat or nested by section (`optim: {lr: 1e-5}`), as config.yaml is written.
    """
    from ..train import CheckpointError, ConfigError, load_config, parse_overrides, resume_config
    from ..train import train as run_train

    console = Console()
    try:
        special, rest = _split_special(list(ctx.args), ("config", "resume"))
        overrides = parse_overrides(rest)
        if "resume" in special:
            if "config" in special:
                raise ConfigError("--resume uses the run's own config.yaml; drop --config")
            cfg = resume_config(special["resume"], overrides)
        else:
            cfg = load_config(special.get("config"), overrides)
        summary = run_train(cfg, resume=special.get("resume"), console=console)
    except (ConfigError, CheckpointError) as exc:
        _fail(console, exc)
        return
    console.print(
        f"[bold green]done[/] {summary['run_dir']}: held-out greedy acc {summary['warm_start_acc']:.3f} (warm start) "
        f"-> {summary['final_acc']:.3f} after {summary['steps']} RL steps"
    )



@app.command(cls=_SectionedHelp, context_settings=_EXTRA)
def sft(ctx: typer.Context) -> None:
    """Supervised warm start on the task's reference answers; saves a checkpoint for `train init=PATH`.

    Usage: grouprl sft [--out DIR] [task=... model=... sft_steps=... sft_lr=... seed=...]
    """
    import torch

    from ..models import build_model, build_tokenizer, load_pretrained, save_pretrained
    from ..train import ConfigError, load_config, parse_overrides
    from ..train.data import evaluate, step_generator
    from ..train.task_source import eval_subset, load_task, make_guard
    from ..train.sft import sft as run_sft
    from ..train.device import resolve_device
    from ..train.sft import sft_kwargs, sft_progress, sft_summary

    console = Console()
    try:
        special, rest = _split_special(list(ctx.args), ("out", "config"))
        cfg = load_config(special.get("config"), parse_overrides(rest))
        task = load_task(cfg)
    except ConfigError as exc:
        _fail(console, exc)
        return
    out = Path(special.get("out") or Path(cfg.out_dir) / f"sft-{time.strftime('%Y%m%d-%H%M%S')}")
    torch.set_num_threads(cfg.threads)
    from ..models import PRESETS

    if cfg.model in PRESETS:
        tok = build_tokenizer("char")
        model = build_model(cfg.model, tok, seed=cfg.seed)
    else:
        model, tok = load_pretrained(cfg.model)
    t0 = time.perf_counter()
    model.to(resolve_device(cfg.device))
    with sft_progress(console, steps=cfg.sft_steps, target=cfg.sft_target_acc or None,
                      enabled=cfg.progress) as on_step:
        hist = run_sft(model, tok, task, **sft_kwargs(cfg), on_step=on_step)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_pretrained(model, tok, str(out), files={"sft_log.jsonl": "".join(json.dumps(r) + "\n" for r in hist)})
    guard = make_guard(cfg, task)
    ev = evaluate(model, tok, eval_subset(task, cfg.eval_size), guard, max_new_tokens=cfg.max_new_tokens,
                  pass_k=cfg.pass_k, pass_k_size=cfg.pass_k_size, temperature=cfg.temperature, top_p=cfg.top_p,
                  generator=step_generator(cfg.seed, 0, 5))
    (out / "sft_eval.json").write_text(json.dumps({"steps": len(hist), "final_loss": hist[-1]["loss"] if hist else None,
                                                   **{k: v for k, v in ev.items() if k != "scores"}}, indent=2) + "\n")
    console.print(f"[bold green]SFT done[/] {out}: {sft_summary(hist)} in {time.perf_counter() - t0:.0f}s, "
                  f"held-out greedy acc {ev['acc']:.3f}; next: grouprl train init={out}")


@app.command()
def plot(run: Path = typer.Argument(..., help="run directory"),
         out: Path = typer.Option(None, help="PNG path (default RUN/curves.png)")) -> None:
    """Write PNG learning curves of a run (held-out accuracy, reward, entropy, ...)."""
    from ..train.plot import plot_run

    console = Console()
    try:
        path = plot_run(run, out)
    except FileNotFoundError as exc:
        _fail(console, exc)
        return
    console.print(f"wrote {path}")


