"""``grouprl arena`` and ``grouprl report``.

    grouprl arena SPEC.yaml [--workers 2] [--out DIR] [--backend local|ray]
    grouprl arena --preset quick            # built-in specs (docs/arena.md): quick, evidence, token_credit, ...
    grouprl arena --preset agents --dry-run # the plan: overrides, N cells, warm starts, estimated time
    grouprl arena --resume arenas/quick     # continue a killed sweep; finished cells are not re-run
    grouprl report arenas/quick             # report.md + report.html + figures in arenas/quick/report
    grouprl report arenas/quick --json      # ... and summary.json (per-method IQM, paired comparisons)
    grouprl export arenas/evidence --slim benchmarks/results/arena/evidence.db   # a store small enough for git
    grouprl claims benchmarks/results/arena/*.db --out docs/evidence.md     # the claims table
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .app import app


@app.command()
def arena(
    spec: Optional[Path] = typer.Argument(None, help="arena spec YAML (methods, tasks, seeds, base config)"),
    preset: Optional[str] = typer.Option(None, help="built-in spec (quick, evidence, token_credit, maxmin, agents, "
                                                 "selfplay; a SPEC file is merged over it)"),
    out: Optional[Path] = typer.Option(None, help="parent directory of the arena run (default: the spec's out_dir)"),
    name: Optional[str] = typer.Option(None, help="arena run name (default: the spec's name)"),
    workers: int = typer.Option(2, min=1, help="cells run in parallel (one torch thread each)"),
    resume: Optional[Path] = typer.Option(None, help="continue this arena run directory; done cells are kept"),
    retry_failed: bool = typer.Option(False, help="with --resume: also run the failed cells again"),
    backend: str = typer.Option("local", help="local (worker processes) or ray"),
    ray_address: Optional[str] = typer.Option(None, help="with --backend ray: address of an existing Ray cluster"),
    report: bool = typer.Option(True, help="write the report when the sweep ends"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (each method's overrides, the number of "
                                 "cells, the warm starts, an estimated time) and run nothing"),
) -> None:
    """Run every (method, task, seed) cell of an arena with the embedded trainer; results go to
    OUT/NAME/arena.db (SQLite), CSV/Parquet exports and a report."""
    from ..arena import ArenaError, SpecError, load_spec, run_arena
    from ..arena.report import write_report

    console = Console()
    try:
        if resume is not None:
            if dry_run:
                raise ArenaError("--dry-run plans a new sweep; drop --resume (the run's cells are listed in its arena.db)")
            if spec is not None or preset is not None:
                raise ArenaError("--resume uses the run's own spec; drop SPEC / --preset")
            root = run_arena(resume=resume, workers=workers, backend=backend, retry_failed=retry_failed,
                             console=console, ray_address=ray_address)
        else:
            s = load_spec(spec, preset, {"name": name})
            if dry_run:
                from ..arena.plan import format_plan, plan

                console.print(format_plan(plan(s, workers)), markup=False, highlight=False, soft_wrap=True)
                return
            root = run_arena(s, out_dir=out, workers=workers, backend=backend, console=console, ray_address=ray_address)
    except (ArenaError, SpecError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=2)
    console.print(f"[bold green]arena done[/] {root} (database {root / 'arena.db'}, exports {root / 'export'})")
    if report:
        paths = write_report(root)
        console.print(f"report: {paths['markdown']} and {paths['html']}")


@app.command("report")
def report_cmd(
    run: Path = typer.Argument(..., help="arena run directory (holds arena.db), arena database file (e.g. a slim "
                                         "copy) or training run directory (config.yaml)"),
    out: Optional[Path] = typer.Option(None, help="output directory (default RUN/report; DIR/NAME-report beside a "
                                                  "database file NAME.db)"),
    export_data: bool = typer.Option(True, "--export/--no-export", help="also (re)write CSV/Parquet exports to "
                                                                        "RUN/export (OUT/export for a database file)"),
    json_out: bool = typer.Option(False, "--json", help="arena runs: also write summary.json (methods with IQM and CI; "
                                                         "paired comparisons with the baseline: diff, CI, p, p_adj, "
                                                         "prob_improvement, mde)"),
) -> None:
    """Markdown + HTML report of an arena run (figures, confidence intervals, tests) or of one training
    run (curves, evaluation table, summary, config, versions)."""
    from ..arena import export
    from ..arena.report import store_path, write_report
    from ..arena.runner import DB_NAME

    console = Console()
    if run.is_dir() and not (run / DB_NAME).is_file() and (run / "config.yaml").is_file():
        from ..train.run_report import write_run_report

        if json_out:
            console.print(f"[bold red]error:[/] --json writes an arena's summary.json; {run} is a training run, "
                          f"whose summary is already {run / 'summary.json'}. Drop --json.")
            raise typer.Exit(code=2)

        paths = write_run_report(run, out)
        console.print(f"wrote {paths['markdown']}, {paths['html']} and figures in {paths['figures']}")
        return
    try:
        paths = write_report(run, out, json_summary=json_out)
    except FileNotFoundError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=2)
    if export_data:
        export(store_path(run), (paths["markdown"].parent if run.is_file() else run) / "export")
    console.print(f"wrote {paths['markdown']}, {paths['html']} and figures in {paths['figures']}"
                  + (f"; {paths['json']}" if "json" in paths else ""))


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(..., help="arena run directory (holds arena.db) or arena database file"),
    out: Optional[Path] = typer.Option(None, help="CSV/Parquet directory (default RUN/export)"),
    slim: Optional[Path] = typer.Option(None, help="instead write a slim copy of the database to this file: every "
                                                   "cell, metric and evaluation row, and the per-prompt scores of "
                                                   "each cell's first and last evaluation only (VACUUMed)"),
) -> None:
    """Export an arena store: its tables as CSV/Parquet, or (--slim OUT.db) a copy small enough to keep
    in the repository, from which `grouprl report` and `grouprl claims` work alone."""
    from ..arena import export
    from ..arena.report import store_path
    from ..arena.store import slim as slim_copy

    console = Console()
    try:
        db = store_path(run)
        if slim is not None:
            if out is not None:
                raise ValueError("--out is the CSV/Parquet directory; with --slim the copy goes to the --slim path: "
                                 "drop --out")
            path = slim_copy(db, slim)
            console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
            return
        written = export(db, out if out is not None else (run.parent / "export" if run.is_file() else run / "export"))
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=2)
    console.print(f"wrote {len(written)} files in {written[0].parent if written else out}")


@app.command("claims")
def claims_cmd(
    runs: list[Path] = typer.Argument(..., help="stored arena runs (run directories or database files), matched to "
                                                "the claims' presets by their spec name"),
    out: Path = typer.Option(Path("docs/evidence.md"), help="the Markdown file to write"),
) -> None:
    """The claims table: each seed paper's headline claim against the arena's measured difference from
    GRPO (CI, MDE, Holm-adjusted p, verdict), from stored runs only (grouprl.arena.claims)."""
    from ..arena.claims import write_claims

    console = Console()
    command = "grouprl claims " + " ".join(str(r) for r in runs) + f" --out {out}"
    try:
        path = write_claims(runs, out, command=command)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=2)
    console.print(f"wrote {path}")
