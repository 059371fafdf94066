"""``grouprl report RUN``: a Markdown report (and the same report as HTML) with PNG figures.

Everything is read from the arena's SQLite store. Sections:

1. cells: how many done / failed (with each failure's first error line), sweep wall time;
2. final score per task: mean over seeds of the final evaluation (``spec.metric``, default greedy
   held-out accuracy), its 95% percentile-bootstrap CI over seeds, the IQM over seeds with its 95%
   bootstrap CI, each method's rank; then the paired comparison with the baseline (``evidence``):
   the mean over (seed, prompt) of the paired per-prompt score differences at the final evaluation
   with its hierarchical-bootstrap CI, the exact sign-flip p-value on the per-seed differences
   (Holm-adjusted across methods), the probability of improvement over seeds with its CI, and the
   minimum detectable effect at 80% power, with a plain verdict;
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
from .stats import (bootstrap_band, bootstrap_ci, hierarchical_bootstrap, holm, iqm_ci, mde, min_p_value,
                    probability_of_improvement, ranks, sign_flip_p)
from .store import ArenaStore

__all__ = ["write_report", "write_summary", "final_scores", "evidence", "load", "store_path", "ReportData",
           "ITEM_METRIC"]

ALPHA = 0.05
POWER = 0.8
#: The eval metric whose per-example values ``eval_items`` stores (greedy correctness; their mean is
#: ``acc``). Comparisons of another ``spec.metric`` pair by seed only.
ITEM_METRIC = "acc"


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


def store_path(run: str | Path) -> Path:
    """The arena database of ``run``: an arena run directory (its ``arena.db``) or a database file
    (e.g. a slim copy kept in the repository, ``grouprl export RUN --slim OUT.db``)."""
    run = Path(run)
    db = run if run.is_file() else run / DB_NAME
    if not db.is_file():
        raise FileNotFoundError(f"{run}: neither {DB_NAME} (an arena run) nor config.yaml (a training run) is there; "
                                "give a run directory or an arena database file")
    return db


def default_out(run: Path) -> Path:
    """Where a report goes by default: ``RUN/report``, or ``DIR/NAME-report`` beside a database file."""
    return run.parent / f"{run.stem}-report" if run.is_file() else run / "report"


def load(run: str | Path) -> ReportData:
    """The report's data of an arena run directory or database file, opened read-only (close
    ``.store`` when done)."""
    store = ArenaStore(store_path(run), readonly=True)
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


def _item_matrix(data: ReportData, cell_ids: list[str]) -> np.ndarray | None:
    """(cells, items) final per-example scores, columns = items scored in every given cell (sorted
    ids); None when some cell has no ``eval_items`` rows."""
    rows = data.store.final_items(cell_ids)
    if not rows:
        return None
    cid, item, score = zip(*rows)
    cells, ci = np.unique(np.array(cid, dtype=object), return_inverse=True)
    if len(cells) < len(set(cell_ids)):
        return None
    items, ii = np.unique(np.array(item, dtype=object), return_inverse=True)
    mat = np.full((len(cells), len(items)), np.nan)
    mat[ci, ii] = np.array(score, dtype=np.float64)  # NULL (None) -> NaN
    order = np.searchsorted(cells, np.array(cell_ids, dtype=object))  # rows in the order asked
    mat = mat[order]
    return mat[:, ~np.isnan(mat).any(axis=0)]


def evidence(data: ReportData, task: str, metric: str, *, seed: int = 0,
             n_boot: int = 2_000) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None]:
    """The final-score statistics of one task: (method rows, comparison rows, note).

    Method rows: ``task, method, n_seeds, mean, iqm, ci_low, ci_high`` (the CI is the IQM's, a
    percentile bootstrap over seeds). Comparison rows, each method against ``spec.baseline`` on the
    seeds both finished: ``task, method, baseline, n_seeds, n_items, diff, ci_low, ci_high, p, p_adj,
    prob_improvement, mde``. With per-example scores (``metric == "acc"`` and ``eval_items`` rows
    for every cell involved): ``diff`` is the mean over (seed, prompt) of method − baseline on the
    prompts every cell scored (``n_items`` of them), its CI the hierarchical bootstrap; the per-seed
    scores are the means over those prompts. Otherwise the per-seed scores are the final ``metric``
    values, ``n_items`` is None and the CI is the bootstrap over seeds; ``note`` says why.
    ``p``: exact sign-flip test on the per-seed differences, ``p_adj``: Holm over the task's
    comparisons, ``prob_improvement``: P(method seed > baseline seed) (rliable), ``mde``: minimum
    detectable effect at 80% power (paired t approximation with the seed-level SD of the
    differences; NaN with one seed). NaN values mean "not defined"."""
    baseline = data.spec["baseline"]
    scores = final_scores(data, metric, task)
    ms = [m for m in data.methods() if m in scores]
    methods = []
    for m in ms:
        vals = np.array([scores[m][sd] for sd in sorted(scores[m])])
        iqm, lo, hi = iqm_ci(vals, n_boot=n_boot, seed=seed)
        methods.append({"task": task, "method": m, "n_seeds": int(vals.size), "mean": float(vals.mean()), "iqm": iqm,
                        "ci_low": lo, "ci_high": hi})
    cell = {(c["method"], c["seed"]): c["cell_id"] for c in data.done if c["task"] == task}
    comps: list[dict[str, Any]] = []
    note = None if metric == ITEM_METRIC else (
        f"the score `{metric}` has no per-prompt values (eval_items hold greedy `{ITEM_METRIC}`)")
    for m in ms:
        if m == baseline or baseline not in scores:
            continue
        common = sorted(set(scores[m]) & set(scores[baseline]))
        if not common:
            continue
        mat = _item_matrix(data, [cell[(m, sd)] for sd in common] + [cell[(baseline, sd)] for sd in common]) \
            if metric == ITEM_METRIC else None
        if mat is not None and mat.shape[1] > 0:
            x, y = mat[:len(common)], mat[len(common):]
            n_items: int | None = x.shape[1]
            d = x - y
            xs, ys = x.mean(axis=1), y.mean(axis=1)
        else:
            if metric == ITEM_METRIC and mat is None:
                note = ("per-prompt statistics are unavailable: this database holds no per-example scores "
                        "(`eval_items`) for these cells (a database made before they were stored, or a trainer "
                        "that does not write them: agent runs)")
            elif metric == ITEM_METRIC:
                note = (f"`{m}` and `{baseline}` scored no evaluation prompt in common (different evaluation "
                        "sets), so they are compared by seed only")
            xs = np.array([scores[m][sd] for sd in common])
            ys = np.array([scores[baseline][sd] for sd in common])
            n_items, d = None, (xs - ys)[:, None]
        diff, lo, hi = hierarchical_bootstrap(d, n_boot=n_boot, seed=seed)
        ds = xs - ys
        pi = probability_of_improvement(xs, ys, n_boot=n_boot, seed=seed)[0]
        comps.append({"task": task, "method": m, "baseline": baseline, "n_seeds": len(common), "n_items": n_items,
                      "diff": diff, "ci_low": lo, "ci_high": hi, "p": float(sign_flip_p(ds, seed=seed)),
                      "p_adj": None, "prob_improvement": pi,
                      "mde": mde(float(ds.std(ddof=1)) if ds.size > 1 else 0.0, ds.size, alpha=ALPHA, power=POWER)})
    for c, a in zip(comps, holm([c["p"] for c in comps])):
        c["p_adj"] = float(a)
    return methods, comps, note


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def summary(data: ReportData, *, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """``{"methods": [...], "comparisons": [...]}`` over every task (``evidence``), NaN as None."""
    metric = data.spec.get("metric", ITEM_METRIC)
    out: dict[str, list[dict[str, Any]]] = {"methods": [], "comparisons": []}
    for task in data.tasks():
        methods, comps, _ = evidence(data, task, metric, seed=seed)
        out["methods"] += methods
        out["comparisons"] += comps
    return _json_safe(out)


# ---------------------------------------------------------------------------- blocks
def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def _pfmt(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _table(headers: list[str], rows: list[list[str]]) -> tuple:
    return ("table", headers, rows)


def _sections(data: ReportData, run: Path, fig_dir: Path, fig_rel: str, seed: int,
              collected: dict[str, list[dict[str, Any]]] | None = None) -> list[tuple]:
    """The report's blocks; the final-score statistics of every task are appended to ``collected``
    (``{"methods": [...], "comparisons": [...]}``) when given."""
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
        mrows, crows, note = evidence(data, task, metric, seed=seed)
        if collected is not None:
            collected["methods"] += mrows
            collected["comparisons"] += crows
        rk = ranks([r["mean"] for r in mrows])
        start = final_scores(data, metric, task, first=True)
        warm = [v for m in ms for v in start.get(m, {}).values()]
        if warm:
            blocks.append(("p", f"Warm start (step 0, before RL; shared by all methods of a seed): `{metric}` "
                                f"{np.mean(warm):.3f} on average over seeds."))
        rows = []
        for r, rank in zip(mrows, rk):
            m = r["method"]
            _, lo, hi = bootstrap_ci(list(scores[m].values()), seed=seed)
            gains = [scores[m][sd] - start[m][sd] for sd in scores[m] if sd in start.get(m, {})]
            rows.append([f"`{m}`", str(r["n_seeds"]), _fmt(r["mean"]),
                         f"[{_fmt(lo)}, {_fmt(hi)}]", f"{_fmt(r['iqm'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]",
                         f"{rank:g}", f"{np.mean(gains):+.3f}" if gains else "–"])
        blocks.append(_table(["method", "seeds", f"final {metric} (mean)", "95% CI", "IQM [95% CI]", "rank",
                              "change from warm start"], rows))
        if crows:
            rows = []
            for c in crows:
                sig = c["p_adj"] < ALPHA
                if not sig:
                    not_sig.append(f"`{c['method']}` vs `{baseline}` on `{task}` (diff {c['diff']:+.3f}, "
                                   f"MDE {_fmt(c['mde'])})")
                design = f"{c['n_seeds']} × {c['n_items']}" if c["n_items"] is not None else f"{c['n_seeds']} × –"
                below = np.isfinite(c["mde"]) and abs(c["diff"]) < c["mde"]
                verdict = ("significant" if sig else "not significant") + ("; below the MDE" if below else "")
                rows.append([f"`{c['method']}`", design, f"{c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]",
                             _pfmt(c["p"]), _pfmt(c["p_adj"]), _fmt(c["prob_improvement"], 2), _fmt(c["mde"]), verdict])
            blocks.append(("p", f"Comparison with the baseline `{baseline}` (paired: same seed = same warm start, "
                                f"same evaluation prompts):"))
            blocks.append(_table(["method", "seeds × prompts", f"diff vs {baseline} [95% CI]", "p", "p (Holm)",
                                  "P(improvement)", "MDE (80% power)", "verdict"], rows))
            n = min(c["n_seeds"] for c in crows)
            blocks.append(("p", "diff: mean over (seed, prompt) of the method's minus the baseline's per-prompt score "
                                "at the final evaluation, with a 95% hierarchical-bootstrap CI (seeds resampled, then "
                                "prompts within each seed). p: two-sided exact sign-flip permutation test on the "
                                "per-seed mean differences, Holm–Bonferroni adjusted over the "
                                f"{len(crows)} comparisons; significant means adjusted p < {ALPHA}. "
                                "P(improvement): probability that a seed of the method scores above a seed of the "
                                "baseline (Mann–Whitney, ties count 1/2; Agarwal et al. 2021). MDE: the smallest true "
                                f"difference this design (seeds, observed seed-to-seed SD of the differences) detects "
                                f"with {POWER:.0%} power at α = {ALPHA} (paired t approximation); a non-significant "
                                "difference smaller than the MDE is not evidence of no effect, only of an effect "
                                f"below what this sweep can see. With {n} paired seeds the smallest attainable p is "
                                f"{min_p_value(n):.3g}" + (", so no difference in this table can be significant."
                                                           if min_p_value(n) >= ALPHA else ".")))
            if note:
                blocks.append(("p", f"Note: {note}; seeds × – in the table: the comparisons use the per-seed final "
                                    f"`{metric}` and the CI resamples seeds only."))

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
                              "an effect below the MDE would usually go undetected with this many seeds: "
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


def group_fairness(data: ReportData, metric: str, task: str,
                   methods: list[str]) -> tuple[list[str], dict[str, tuple[list[float], dict[str, float]]]]:
    """(data groups, ``{method: (final metric per group, mean over seeds; fairness_summary)}``) of a
    task whose evaluations hold ``metric/<group>`` for two or more groups; ``([], {})`` otherwise.
    A method without a score on some group is left out."""
    from ..metrics.fairness import fairness_summary

    names = [n for n in data.store.names("evals") if n.startswith(f"{metric}/")]
    if len(names) < 2:
        return [], {}
    per = {n: final_scores(data, n, task) for n in names}
    out = {}
    for m in methods:
        gm = [float(np.mean(list(per[n][m].values()))) if per[n].get(m) else np.nan for n in names]
        if not any(np.isnan(gm)):
            out[m] = (gm, fairness_summary(gm))
    return [n.split("/", 1)[1] for n in names], out


def _fairness(data: ReportData, metric: str, task: str, methods: list[str]) -> tuple[list[list[str]], list[str]]:
    groups, per = group_fairness(data, metric, task, methods)
    rows = []
    for m, (gm, summ) in per.items():
        worst = groups[int(np.argmin(gm))]
        rows.append([f"`{m}`", *[_fmt(v) for v in gm], f"{worst} ({_fmt(summ['worst'])})", _fmt(summ["p20"]),
                     _fmt(summ["gini"])])
    return (rows, ["method", *groups, "worst group", "p20", "Gini"]) if rows else ([], [])


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
                 seed: int = 0, json_summary: bool = False) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and PNG figures (under ``out_dir/figures``) for an arena
    run directory or database file (``store_path``); ``out_dir`` defaults to ``default_out(run)``. With ``json_summary`` also ``summary.json``:
    ``{"methods": [...], "comparisons": [...]}`` with the rows of ``evidence`` for every task (the
    numbers of the final-score tables; undefined values, e.g. the MDE of one seed, are null).
    Returns the paths written."""
    run = Path(run)
    data = load(run)
    collected: dict[str, list[dict[str, Any]]] = {"methods": [], "comparisons": []}
    try:
        out = Path(out_dir) if out_dir is not None else default_out(run)
        out.mkdir(parents=True, exist_ok=True)
        blocks = _sections(data, run, out / figures, figures, seed, collected)
    finally:
        data.store.close()
    md, page = out / "report.md", out / "report.html"
    md.write_text(render_markdown(blocks))
    page.write_text(render_html(blocks, f"Arena report: {data.spec['name']}"))
    paths = {"markdown": md, "html": page, "figures": out / figures}
    if json_summary:
        paths["json"] = _write_json(out / "summary.json", _json_safe(collected))
    return paths


def write_summary(run: str | Path, out_dir: str | Path | None = None, *, seed: int = 0) -> Path:
    """Only ``summary.json`` (see ``write_report``) of an arena run, in ``out_dir`` (default ``RUN/report``)."""
    run = Path(run)
    data = load(run)
    try:
        body = summary(data, seed=seed)
    finally:
        data.store.close()
    out = Path(out_dir) if out_dir is not None else default_out(run)
    out.mkdir(parents=True, exist_ok=True)
    return _write_json(out / "summary.json", body)


def _write_json(path: Path, body: dict[str, Any]) -> Path:
    import json
    import os

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(json.dumps(body, indent=2, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
