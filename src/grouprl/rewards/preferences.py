"""User-labelled preference data and the K reward models MaxMin-RLHF fits to it (arXiv:2402.08925,
Algorithm 1): the JSONL format, its loader, the response features, and the saved reward models.

**Preference data (JSONL).** One JSON object per line (blank lines are skipped)::

    {"user": "u17", "prompt": "12+34=", "chosen": "46", "rejected": "4600"}

* ``user`` (string or integer): who made the comparison; EM clusters users, not rows;
* ``prompt`` (string): the prompt x;
* ``chosen`` / ``rejected`` (strings): the preferred response y_w and the other one y_l;
* ``meta`` (object, optional): anything else (e.g. a synthetic user's true group); not read by the fit.

Any other key, a missing key or a wrong type is an error naming the file, the line and the field.

**Reward models.** r_u(x, y) = θ_u · f(y), linear in the features ``FEATURES`` of the response
text (``chars-v1``; the prompt is not read). They are small enough to fit and score on a CPU in
seconds and can express "prefers property A" against "prefers property B": a preference for short
answers (θ on ``length`` < 0), for the digits 0–4 over 5–9, for words over digits, and so on.

* ``length``: number of characters / 10;
* ``low_digits`` / ``high_digits``: fraction of characters in 0–4 / 5–9;
* ``letters``: fraction of ASCII letters; ``spaces``: fraction of whitespace; ``other``: the rest.

The fractions of the empty response are 0. ``fit_preference_models`` standardises the feature
differences f(y_w) − f(y_l) before the EM (so one learning rate suits every feature) and stores θ
in the original units.

**Saved models.** A directory with ``reward_models.safetensors`` (tensor ``theta`` (K, D), float64)
and ``manifest.json`` (format, K, feature spec and names, mixture weights, the user → cluster
assignment, log-likelihoods of every restart, re-seeds, empty clusters, reference statistics of
every model on the data's responses). Both are written atomically (temp + fsync + rename).
``RewardModels.load(dir).score(prompts, texts)`` gives the (B, K) rewards the trainer uses
(``grouprl train reward_models=DIR``).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor

from ..core import factorize
from .maxmin import RewardMixture, fit_reward_mixture

__all__ = [
    "FEATURE_SPEC",
    "FEATURES",
    "PreferenceData",
    "PreferenceError",
    "RewardModels",
    "fit_preference_models",
    "load_preferences",
    "text_features",
]

FEATURE_SPEC = "chars-v1"
FEATURES = ("length", "low_digits", "high_digits", "letters", "spaces", "other")
MANIFEST = "manifest.json"
WEIGHTS = "reward_models.safetensors"
FORMAT = "grouprl-reward-models"


class PreferenceError(ValueError):
    """Bad preference data or a bad reward-model directory; the message names the file, line and field."""


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    user: str | int
    prompt: str
    chosen: str
    rejected: str
    meta: dict[str, Any] = {}


_ROW_HINT = ('each line must be a JSON object {"user": str|int, "prompt": str, "chosen": str, "rejected": str} '
             '(optional "meta": object)')


@dataclass
class PreferenceData:
    """Comparisons (x, y_w, y_l) with their users, in file order."""

    users: list
    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    meta: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.users)


def load_preferences(path: str | Path) -> PreferenceData:
    """Read and validate a preference JSONL file (see the module docstring); errors name the line and field."""
    p = Path(path)
    if not p.is_file():
        raise PreferenceError(f"{p}: no such file; pass a JSONL file of preference pairs ({_ROW_HINT}).")
    users, prompts, chosen, rejected, meta = [], [], [], [], []
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):  # reading a file, not a hot path
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PreferenceError(f"{p}:{lineno}: not valid JSON ({exc.msg}); {_ROW_HINT}.") from None
            if not isinstance(obj, dict):
                raise PreferenceError(f"{p}:{lineno}: got a JSON {type(obj).__name__}; {_ROW_HINT}.")
            try:
                row = _Row.model_validate(obj)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = str(err["loc"][0]) if err["loc"] else "row"
                msg = err["msg"]
                if err["type"] == "extra_forbidden":
                    msg = "unknown field (put extra information under \"meta\")"
                raise PreferenceError(f"{p}:{lineno}: field {where!r}: {msg}; {_ROW_HINT}.") from None
            users.append(row.user)
            prompts.append(row.prompt)
            chosen.append(row.chosen)
            rejected.append(row.rejected)
            meta.append(row.meta)
    if not users:
        raise PreferenceError(f"{p}: no preference pairs in the file; {_ROW_HINT}.")
    return PreferenceData(users, prompts, chosen, rejected, meta)


def text_features(texts: Sequence[str]) -> Tensor:
    """The ``chars-v1`` features (B, 6) float64 of response texts (one numpy pass, no loop over rows)."""
    B = len(texts)
    if B == 0:
        return torch.zeros(0, len(FEATURES), dtype=torch.float64)
    arr = np.asarray(list(texts), dtype=str)  # fixed-width unicode, zero padded
    width = max(arr.dtype.itemsize // 4, 1)
    codes = np.ascontiguousarray(arr).view(np.uint32).reshape(B, width)
    real = codes != 0
    n = real.sum(1).astype(np.float64)
    low = (codes >= ord("0")) & (codes <= ord("4"))
    high = (codes >= ord("5")) & (codes <= ord("9"))
    letters = ((codes >= ord("a")) & (codes <= ord("z"))) | ((codes >= ord("A")) & (codes <= ord("Z")))
    spaces = (codes == 32) | (codes == 9) | (codes == 10) | (codes == 13)
    other = real & ~(low | high | letters | spaces)
    denom = np.maximum(n, 1.0)[:, None]
    fracs = np.stack([low.sum(1), high.sum(1), letters.sum(1), spaces.sum(1), other.sum(1)], axis=1) / denom
    return torch.from_numpy(np.concatenate([(n / 10.0)[:, None], fracs], axis=1))


def _write_atomic(path: Path, write) -> None:
    """``write(tmp_path)``, fsync, rename onto ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class RewardModels:
    """K linear reward models over ``FEATURES`` with their manifest (see the module docstring)."""

    theta: Tensor
    manifest: dict[str, Any]

    @property
    def num_models(self) -> int:
        return int(self.theta.shape[0])

    def score(self, prompts: Sequence[str] | None, texts: Sequence[str]) -> Tensor:
        """(B, K) float64 rewards r_u(x, y) of the responses ``texts`` (the prompts are not read)."""
        return text_features(texts) @ self.theta.T

    def save(self, out: str | Path) -> Path:
        from safetensors.torch import save_file

        d = Path(out)
        d.mkdir(parents=True, exist_ok=True)
        theta = self.theta.to(torch.float64).contiguous()
        _write_atomic(d / WEIGHTS, lambda tmp: save_file({"theta": theta}, tmp, metadata={"format": FORMAT}))
        text = json.dumps(self.manifest, indent=2) + "\n"
        _write_atomic(d / MANIFEST, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        return d

    @classmethod
    def load(cls, path: str | Path) -> "RewardModels":
        from safetensors.torch import load_file

        d = Path(path)
        man, wts = d / MANIFEST, d / WEIGHTS
        if not man.is_file() or not wts.is_file():
            raise PreferenceError(
                f"reward_models: {d} lacks {MANIFEST} or {WEIGHTS}; write it with `grouprl fit-rewards DATA.jsonl "
                f"--clusters K --out {d}`.")
        try:
            manifest = json.loads(man.read_text(encoding="utf-8"))
            theta = load_file(str(wts))["theta"]
        except Exception as exc:  # corrupt JSON / safetensors
            raise PreferenceError(f"reward_models: cannot read {d} ({exc}); refit it with `grouprl fit-rewards`.") from None
        if manifest.get("format") != FORMAT or manifest.get("features") != FEATURE_SPEC:
            raise PreferenceError(
                f"reward_models: {man} has format {manifest.get('format')!r} / features {manifest.get('features')!r}; "
                f"this grouprl reads {FORMAT!r} / {FEATURE_SPEC!r}. Refit it with `grouprl fit-rewards`.")
        if theta.dim() != 2 or theta.shape != (manifest.get("K"), len(FEATURES)):
            raise PreferenceError(
                f"reward_models: theta in {wts} has shape {tuple(theta.shape)}, expected (K, {len(FEATURES)}) with "
                f"K = {manifest.get('K')} from {MANIFEST}. Refit it with `grouprl fit-rewards`.")
        return cls(theta=theta.to(torch.float64), manifest=manifest)


def fit_preference_models(
    data: PreferenceData,
    clusters: int,
    *,
    restarts: int = 5,
    seed: int = 0,
    iters: int = 50,
    m_steps: int = 200,
    lr: float = 0.5,
    l2: float = 1e-3,
) -> tuple[RewardModels, RewardMixture]:
    """MaxMin-RLHF's EM (hard assignment, the paper's Algorithm 1) over ``data``: K = ``clusters`` linear BT reward
    models on the ``chars-v1`` features; returns the saved-format models and the raw fit.

    The difference features are divided by their standard deviation over the data (a constant
    column keeps scale 1) for the fit and θ is stored in the original units, so r_u = θ_u · f(y).
    θ is projected onto the span of the comparisons' feature differences (the minimum-norm θ with
    the same margins): directions the data never vary along get no reward, instead of the EM's
    random initial value.
    Reference statistics (``ref_mean`` / ``ref_std``: each model's reward over every chosen and
    rejected response of the data) go to the manifest for ``normalize=zscore``.
    """
    if clusters < 1:
        raise PreferenceError(f"--clusters {clusters}: pass K >= 1.")
    f_w = text_features(data.chosen)
    f_l = text_features(data.rejected)
    diffs = f_w - f_l
    scale = diffs.std(0, correction=0)
    scale = torch.where(scale > 1e-12, scale, torch.ones_like(scale))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_reward_mixture(diffs / scale, data.users, clusters, iters=iters, m_steps=m_steps, lr=lr, l2=l2,
                                 seed=seed, restarts=restarts)
    for w in caught:  # re-raise the empty-cluster warning for the caller
        warnings.warn(str(w.message), stacklevel=2)
    # θ's component in the null space of the comparisons (a feature that never differs, or a
    # combination such as low_digits + high_digits on digit-only data) is left at its random
    # initialisation by the fit; drop it: the minimum-norm θ with the same margin on every comparison
    z = diffs / scale
    _, sv, vh = torch.linalg.svd(z, full_matrices=False)
    keep = vh[sv > sv.max() * 1e-9] if sv.numel() and float(sv.max()) > 0 else vh[:0]
    theta = (fit.theta @ keep.T @ keep) / scale
    _, n_users, labels = factorize(data.users)
    labels = labels if labels is not None else sorted(set(data.users))
    assign = fit.assignment.tolist()
    counts = torch.bincount(fit.assignment, minlength=clusters)
    all_r = torch.cat([f_w, f_l]) @ theta.T
    manifest = {
        "format": FORMAT,
        "version": 1,
        "paper": "MaxMin-RLHF, arXiv:2402.08925 (EM with hard assignment, Algorithm 1)",
        "K": clusters,
        "features": FEATURE_SPEC,
        "feature_names": list(FEATURES),
        "mixture_weights": (counts.to(torch.float64) / max(n_users, 1)).tolist(),
        "cluster_users": counts.tolist(),
        "assignment": {str(u): int(k) for u, k in zip(labels, assign)},
        "log_likelihood": fit.objective,
        "restarts": restarts,
        "restart_log_likelihoods": list(fit.restart_objectives),
        "best_restart": fit.best_restart,
        "iterations": fit.iterations,
        "converged": fit.converged,
        "reseeds": fit.reseeds,
        "empty_clusters": list(fit.empty),
        "seed": seed,
        "em": {"iters": iters, "m_steps": m_steps, "lr": lr, "l2": l2},
        "num_pairs": len(data),
        "num_users": n_users,
        "ref_mean": all_r.mean(0).tolist(),
        "ref_std": all_r.std(0, correction=1).tolist() if all_r.shape[0] > 1 else [1.0] * clusters,
    }
    return RewardModels(theta=theta, manifest=manifest), fit
