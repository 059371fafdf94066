"""``grouprl report RUN``: a Markdown report (and the same report as HTML) with PNG figures.

Everything is read from the arena's SQLite store. Sections:

1. cells: how many done / failed (with each failure's first error line), sweep wall time;
2. final score per task: mean over seeds of the final evaluation (``spec.metric``, default greedy
   held-out accuracy), its 95% percentile-bootstrap CI over seeds, each method's rank, and the
   paired comparison with the baseline (mean difference with its bootstrap CI, the exact sign-flip
   permutation p-value, Holm-adjusted across methods) with a plain verdict;
3. learning curves (eval metric vs RL step, mean over seeds with a 95% bootstrap band);
4. fraction of zero-advantage (constant-reward) groups per training step;
5. wall time per RL step (``time/step``) per method;
6. per-data-group fairness at the final evaluation: accuracy per group (mean over seeds), worst
   group, p20 and Gini of the group accuracies (``grouprl.metrics.fairness``), and each method's
   groupwise regret against the best method on each group, with its worst-group regret
   (``grouprl.metrics.groupwise_regret``, arXiv 2310.04652);
7. versions and the shared config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..reporting import render_html, render_markdown
from .runner import DB_NAME
from .stats import bootstrap_band, bootstrap_ci, holm, min_p_value, paired_test, ranks
from .store import ArenaStore

__all__ = ["write_report", "final_scores", "ReportData"]

ALPHA = 0.05


# ---------------------------------------------------------------------------- data
@dataclass
class ReportData:
    spec: dict[str, Any]
    meta: dict[str, Any]
    cells: list[dict[str, Any]]
    store: ArenaStore

    @property
    def done(self) -> list[dict[str, Any]]:
        return [c for c in self.cells if c["status"] == "done"]

    def methods(self) -> list[str]:
        return [m for m in self.spec["methods"] if any(c["method"] == m for c in self.done)]

    def tasks(self) -> list[str]:
        return [t for t in self.spec["tasks"] if any(c["task"] == t for c in self.done)]


def _load(run: Path) -> ReportData:
    db = run / DB_NAME
    if not db.is_file():
        raise FileNotFoundError(f"{run}: neither {DB_NAME} (an arena run) nor config.yaml (a training run) is there; "
                                "give a run directory")
    store = ArenaStore(db)
    meta = store.meta()
    return ReportData(spec=meta["spec"], meta=meta, cells=store.cells(), store=store)


def final_scores(data: ReportData, metric: str, task: str, first: bool = False) -> dict[str, dict[int, float]]:
    """``{method: {seed: value of metric at the cell's last evaluation}}`` for one task (its first,
    the warm start, when ``first``)."""
    series = data.store.series("evals", metric)
    out: dict[str, dict[int, float]] = {}
    for c in data.done:
        s = [(step, v) for step, v in series.get(c["cell_id"], []) if v is not None]
        if c["task"] == task and s:
            out.setdefault(c["method"], {})[c["seed"]] = s[0][1] if first else s[-1][1]
    return out


def _curves(data: ReportData, table: str, name: str, task: str, method: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, seeds x steps matrix with NaN holes) of one metric for a method on a task."""
    series = data.store.series(table, name)
    rows = [dict((s, v) for s, v in series.get(c["cell_id"], []) if v is not None)
            for c in data.done if c["task"] == task and c["method"] == method]
    rows = [r for r in rows if r]
    if not rows:
        return None
    steps = np.array(sorted(set().union(*rows)))
    mat = np.array([[r.get(s, np.nan) for s in steps] for r in rows], dtype=np.float64)
    return steps, mat


# ---------------------------------------------------------------------------- blocks
def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def _pfmt(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _table(headers: list[str], rows: list[list[str]]) -> tuple:
    return ("table", headers, rows)


def _sections(data: ReportData, run: Path, fig_dir: Path, fig_rel: str, seed: int) -> list[tuple]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec, metric, baseline = data.spec, data.spec.get("metric", "acc"), data.spec["baseline"]
    blocks: list[tuple] = [("h1", f"Arena report: {spec['name']}")]
    n_done = len(data.done)
    failed = [c for c in data.cells if c["status"] == "failed"]
    other = [c for c in data.cells if c["status"] not in ("done", "failed")]
    sweep = data.meta.get("last_sweep_s")
    def n(k: int, word: str) -> str:
        return f"{k} {word}" + ("" if k == 1 else "s")

    blocks.append(("p", f"{len(data.cells)} cells ({n(len(spec['methods']), 'method')} × {n(len(spec['tasks']), 'task')} × "
                        f"{n(len(spec['seeds']), 'seed')}): {n_done} done, {len(failed)} failed, {len(other)} not finished."
                        + (f" Last sweep wall time {sweep / 60:.1f} min." if sweep else "")
                        + f" Score: final held-out `{metric}` (greedy, fixed evaluation set, the same for every seed)."
                        f" Baseline: `{baseline}`. Confidence intervals: 95% percentile bootstrap over seeds."))
    if failed:
        blocks.append(("h2", "Failed cells"))
        blocks.append(_table(["cell", "error"], [[c["cell_id"], (c["error"] or "").splitlines()[0][:160] if c["error"] else ""]
                                                 for c in failed]))
    methods, tasks = data.methods(), data.tasks()
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(spec["methods"])}
    figs: list[Path] = []

    def save(fig, name: str) -> str:
        fig_dir.mkdir(parents=True, exist_ok=True)
        path = fig_dir / f"{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        figs.append(path)
        return f"{fig_rel}/{name}.png" if fig_rel else path.name

    not_sig: list[str] = []
    for task in tasks:
        scores = final_scores(data, metric, task)
        ms = [m for m in methods if m in scores]
        blocks.append(("h2", f"Final score — task `{task}`"))
        means = [float(np.mean(list(scores[m].values()))) for m in ms]
        rk = ranks(means)
        comps: dict[str, Any] = {}
        for m in ms:
            if m == baseline or baseline not in scores:
                continue
            common = sorted(set(scores[m]) & set(scores[baseline]))
            if common:
                comps[m] = paired_test([scores[m][s] for s in common], [scores[baseline][s] for s in common], seed=seed)
        adj = dict(zip(comps, holm([r.p_value for r in comps.values()]))) if comps else {}
        start = final_scores(data, metric, task, first=True)
        warm = [v for m in ms for v in start.get(m, {}).values()]
        if warm:
            blocks.append(("p", f"Warm start (step 0, before RL; shared by all methods of a seed): `{metric}` "
                                f"{np.mean(warm):.3f} on average over seeds."))
        rows = []
        for m, mean, r in zip(ms, means, rk):
            vals = list(scores[m].values())
            _, lo, hi = bootstrap_ci(vals, seed=seed)
            row = [f"`{m}`", str(len(vals)), _fmt(mean), f"[{_fmt(lo)}, {_fmt(hi)}]", f"{r:g}"]
            if m in comps:
                c = comps[m]
                sig = adj[m] < ALPHA
                verdict = "significant" if sig else "not significant"
                if not sig:
                    not_sig.append(f"`{m}` vs `{baseline}` on `{task}`")
                row += [f"{c.mean_diff:+.3f} [{c.low:+.3f}, {c.high:+.3f}]", _pfmt(c.p_value), _pfmt(adj[m]), verdict]
            else:
                row += ["(baseline)" if m == baseline else "–", "–", "–", "–"]
            gains = [scores[m][sd] - start[m][sd] for sd in scores[m] if sd in start.get(m, {})]
            row.append(f"{np.mean(gains):+.3f}" if gains else "–")
            rows.append(row)
        blocks.append(_table(["method", "seeds", f"final {metric}", "95% CI", "rank",
                              f"diff vs {baseline} [95% CI]", "p", "p (Holm)", "verdict", "change from warm start"],
                             rows))
        if comps:
            n = min(r.n for r in comps.values())
            blocks.append(("p", f"Test: two-sided exact sign-flip permutation test on the per-seed differences "
                                f"(method − `{baseline}`, paired by seed: same warm start, same evaluation set), "
                                f"Holm–Bonferroni adjusted over the {len(comps)} comparisons; significant means "
                                f"adjusted p < {ALPHA}. With {n} paired seeds the smallest attainable p is "
                                f"{min_p_value(n):.3g}" + (", so no difference in this table can be significant."
                                                           if min_p_value(n) >= ALPHA else ".")))

        # learning curves
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for m in ms:
            cv = _curves(data, "evals", metric, task, m)
            if cv is None:
                continue
            steps, mat = cv
            mean, lo, hi = bootstrap_band(mat, seed=seed)
            ax.plot(steps, mean, label=m, color=colors[m], lw=1.6)
            ax.fill_between(steps, lo, hi, color=colors[m], alpha=0.15, lw=0)
        ax.set_xlabel("RL step")
        ax.set_ylabel(f"held-out {metric}")
        ax.set_title(f"{task}: mean over seeds, 95% bootstrap band", fontsize=10)
        ax.legend(fontsize=8, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        blocks.append(("h2", f"Learning curves — task `{task}`"))
        blocks.append(("img", save(fig, f"curves_{_slug(task)}"), f"learning curves on {task}"))

        # zero-advantage groups
        fig, ax = plt.subplots(figsize=(6.4, 3.7))
        zrows = []
        for m in ms:
            cv = _curves(data, "metrics", "frac_constant_groups", task, m)
            if cv is None:
                continue
            steps, mat = cv
            mean, lo, hi = bootstrap_band(mat, seed=seed)
            ax.plot(steps, mean, label=m, color=colors[m], lw=1.2)
            ax.fill_between(steps, lo, hi, color=colors[m], alpha=0.12, lw=0)
            per_seed = np.nanmean(mat, axis=1)
            mu, lo_, hi_ = bootstrap_ci(per_seed, seed=seed)
            zrows.append([f"`{m}`", _fmt(mu), f"[{_fmt(lo_)}, {_fmt(hi_)}]"])
        ax.set_xlabel("RL step", labelpad=1)
        ax.set_ylabel("fraction of groups")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{task}: zero-advantage (constant-reward) groups per step", fontsize=10)
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        blocks.append(("h2", f"Zero-advantage groups — task `{task}`"))
        blocks.append(("img", save(fig, f"zero_adv_{_slug(task)}"), f"zero-advantage groups on {task}"))
        blocks.append(_table(["method", "mean fraction over training", "95% CI"], zrows))

        # wall time per step
        trows, tnames, tmeans, terr = [], [], [], []
        for m in ms:
            cv = _curves(data, "metrics", "time/step", task, m)
            if cv is None:
                continue
            per_seed = np.nanmean(cv[1], axis=1)
            mu, lo_, hi_ = bootstrap_ci(per_seed, seed=seed)
            trows.append([f"`{m}`", _fmt(mu), f"[{_fmt(lo_)}, {_fmt(hi_)}]"])
            tnames.append(m)
            tmeans.append(mu)
            terr.append([mu - lo_, hi_ - mu])
        if tnames:
            fig, ax = plt.subplots(figsize=(6.4, 2.8))
            ax.bar(tnames, tmeans, yerr=np.array(terr).T, color=[colors[m] for m in tnames], capsize=3)
            ax.set_ylabel("seconds per RL step")
            ax.set_title(f"{task}: wall time per step (mean, 95% CI over seeds)", fontsize=10)
            ax.tick_params(axis="x", labelsize=8)
            fig.tight_layout()
            blocks.append(("h2", f"Wall time per RL step — task `{task}`"))
            blocks.append(("img", save(fig, f"time_{_slug(task)}"), f"wall time per step on {task}"))
            blocks.append(_table(["method", "s / step", "95% CI"], trows))
            blocks.append(("p", "`time/step` = rollout + log-probs + advantages + update (evaluation excluded), measured "
                                "while other cells ran in parallel on the same machine: compare within one sweep only."))

        # fairness across data groups
        frows, fheaders = _fairness(data, metric, task, ms)
        if frows:
            blocks.append(("h2", f"Per-group fairness — task `{task}`"))
            blocks.append(("p", f"Final `{metric}` per data group (mean over seeds); worst group, p20 (20th percentile of "
                                "the min-max normalised group scores) and Gini of the group scores from "
                                "`grouprl.metrics.fairness`. Gini 0 = every group equal."))
            blocks.append(_table(fheaders, frows))
        rrows, rheaders, n_seeds = _regret(data, metric, task, ms)
        if rrows:
            blocks.append(("h2", f"Groupwise regret — task `{task}`"))
            blocks.append(("p", f"Regret of each method on each data group against the best method on that group "
                                f"(arXiv 2310.04652): Regret_g = Σ_(t∈T_g) ℓ_t − min_h Σ_(t∈T_g) ℓ_(h,t), the "
                                f"hypotheses h = the methods of this table, loss ℓ = 1 − `{metric}` per evaluation "
                                f"item, T_g = group g's final-evaluation items over the {n_seeds} seed(s) that every "
                                "method finished (the same items for every method). Shown per item, Regret_g / |T_g|: "
                                "the best method on a group has 0; the last column is the method's largest "
                                "(worst-group) regret."))
            blocks.append(_table(rheaders, rrows))

    blocks.append(("h2", "Significance, plainly"))
    if not_sig:
        blocks.append(("p", "Not significant (Holm-adjusted p ≥ 0.05): " + "; ".join(not_sig)
                            + ". Differences in means and ranks among these methods may be noise of the seeds; "
                              "run more seeds (`seeds:` in the spec) before drawing conclusions."))
    else:
        blocks.append(("p", "Every comparison with the baseline is significant at Holm-adjusted p < 0.05."))

    blocks.append(("h2", "Setup"))
    blocks.append(("p", "Shared config (`base`): " + ", ".join(f"`{k}={v}`" for k, v in spec.get("base", {}).items())))
    blocks.append(_table(["method", "overrides"], [[f"`{m}`", ", ".join(f"`{k}={v}`" for k, v in o.items()) or "–"]
                                                   for m, o in spec["methods"].items()]))
    vers = data.meta.get("versions", {})
    blocks.append(("p", "Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items())))
    return blocks


def _fairness(data: ReportData, metric: str, task: str, methods: list[str]) -> tuple[list[list[str]], list[str]]:
    from ..metrics.fairness import fairness_summary

    names = [n for n in data.store.names("evals") if n.startswith(f"{metric}/")]
    if len(names) < 2:
        return [], []
    groups = [n.split("/", 1)[1] for n in names]
    per = {n: final_scores(data, n, task) for n in names}
    rows = []
    for m in methods:
        gm = []
        for n in names:
            vals = list(per[n].get(m, {}).values())
            gm.append(float(np.mean(vals)) if vals else np.nan)
        if any(np.isnan(gm)):
            continue
        summ = fairness_summary(gm)
        worst = groups[int(np.argmin(gm))]
        rows.append([f"`{m}`", *[_fmt(v) for v in gm], f"{worst} ({_fmt(summ['worst'])})", _fmt(summ["p20"]),
                     _fmt(summ["gini"])])
    return rows, ["method", *groups, "worst group", "p20", "Gini"]


def _regret(data: ReportData, metric: str, task: str, methods: list[str]) -> tuple[list[list[str]], list[str], int]:
    """Per-group regret per evaluation item of each method against the best method on that group.

    Rounds = (seed, group) pairs over the seeds every method finished, one-hot membership; the loss
    of a round is the group's mean item loss 1 − ``metric/<group>``. A group's n_g items all share
    its round, so the regret on these rounds is Regret_g / n_g exactly (sums are linear); dividing
    by the number of seeds S gives Regret_g / |T_g| with |T_g| = S·n_g, which needs no group sizes.
    """
    import torch

    from ..metrics.regret import groupwise_regret

    names = [n for n in data.store.names("evals") if n.startswith(f"{metric}/")]
    if len(names) < 2 or len(methods) < 2:
        return [], [], 0
    per = {n: final_scores(data, n, task) for n in names}
    seeds = sorted(set.intersection(*[set(per[n].get(m, {})) for n in names for m in methods]))
    if not seeds:
        return [], [], 0
    G, S = len(names), len(seeds)
    loss = torch.tensor([[[1.0 - per[n][m][s] for m in methods] for n in names] for s in seeds],
                        dtype=torch.float64).reshape(S * G, len(methods))  # rounds (seed, group) x methods
    member = torch.eye(G, dtype=torch.bool).repeat(S, 1)
    groups = [n.split("/", 1)[1] for n in names]
    rows = []
    for j, m in enumerate(methods):
        reg = groupwise_regret(loss[:, j], loss, member) / S
        w = int(reg.argmax())
        rows.append([f"`{m}`", *[_fmt(float(v)) for v in reg], f"{groups[w]} ({_fmt(float(reg[w]))})"])
    return rows, ["method", *groups, "worst-group regret"], S


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def write_report(run: str | Path, out_dir: str | Path | None = None, *, figures: str = "figures",
                 seed: int = 0) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and PNG figures (under ``out_dir/figures``) for an arena
    run; ``out_dir`` defaults to ``RUN/report``. Returns the paths written."""
    run = Path(run)
    data = _load(run)
    try:
        out = Path(out_dir) if out_dir is not None else run / "report"
        out.mkdir(parents=True, exist_ok=True)
        blocks = _sections(data, run, out / figures, figures, seed)
    finally:
        data.store.close()
    md, page = out / "report.md", out / "report.html"
    md.write_text(render_markdown(blocks))
    page.write_text(render_html(blocks, f"Arena report: {data.spec['name']}"))
    return {"markdown": md, "html": page, "figures": out / figures}
