"""The sanity ladder: does a metric rank real drums above the baselines?

On the reference clips (those whose true drums play at all), a metric should order
    true-drums > other-clip > each of shaped-noise, silence, bass-copy
(the true drums; real drums from another part; things that are not drums for this
bass).  Each rung is checked two ways: the set means, and the per-clip win rate (the
share of clips where the higher set scores above the lower one; ties count half).  A
metric passes when every rung's means are in order and every win rate is at least
0.5.  `level_diff_db` is oriented as -|level_diff_db| (0 dB is best); every other
metric is "higher is better".  The grader's default features are the passing ones.
"""
from __future__ import annotations

import numpy as np

from infer.baselines import BASS, NOISE, OTHER, SILENCE, TRUE

RUNGS = ((TRUE, OTHER), (OTHER, NOISE), (OTHER, SILENCE), (OTHER, BASS))
MIN_WIN_RATE = 0.5


TIE_RTOL, TIE_ATOL = 1e-9, 1e-12


def oriented(metric: str, values):
    values = np.asarray(values, np.float64)
    return -np.abs(values) if metric == "level_diff_db" else values


def _rung(per_set: dict, higher: str, lower: str) -> dict | None:
    if higher not in per_set or lower not in per_set:
        return None
    a, b = per_set[higher], per_set[lower]
    common = a.index.intersection(b.index)
    if not len(common):
        return None
    x, y = a.loc[common].to_numpy(), b.loc[common].to_numpy()
    # Equal up to float rounding is a tie: the order of a parallel job's sums must not decide
    # whether a metric that cannot tell two sets apart passes.
    tie = np.isclose(x, y, rtol=TIE_RTOL, atol=TIE_ATOL)
    win = float((((x > y) & ~tie).sum() + 0.5 * tie.sum()) / len(common))
    ordered = bool(a.mean() > b.mean()
                   and not np.isclose(a.mean(), b.mean(), rtol=TIE_RTOL, atol=TIE_ATOL))
    return {"higher": higher, "lower": lower, "mean_higher": float(a.mean()), "mean_lower": float(b.mean()),
            "means_ordered": ordered, "win_rate": round(win, 4), "clips": int(len(common)),
            "passes": ordered and win >= MIN_WIN_RATE}


def sanity_ladder(table, metrics: list[str]) -> dict | None:
    """{metric: {passes, means, rungs, clips}} from the clips table (None without baselines)."""
    import pandas as pd

    rows = table[table["baseline"] & table["drums_active"]]
    if rows.empty or not {TRUE, OTHER} <= set(rows["set"]):
        return None
    out = {}
    for metric in metrics:
        per_set = {label: pd.Series(oriented(metric, group[metric]), index=group["clip_id"].to_numpy())
                   for label, group in rows.groupby("set")}
        rungs = [r for r in (_rung(per_set, hi, lo) for hi, lo in RUNGS) if r is not None]
        out[metric] = {"passes": bool(rungs) and all(r["passes"] for r in rungs),
                       "means": {k: float(v.mean()) for k, v in per_set.items()},
                       "rungs": rungs, "clips": int(rows["clip_id"].nunique())}
    return out


def passing_metrics(ladder: dict | None) -> list[str] | None:
    return None if ladder is None else [m for m, r in ladder.items() if r["passes"]]


def ladder_text(ladder: dict) -> str:
    """A plain-text table: one line per metric, the set means in ladder order, win rates, verdict."""
    sets = [TRUE, OTHER, NOISE, SILENCE, BASS]
    head = f"{'metric':22s} " + " ".join(f"{s:>12s}" for s in sets) + "   win rates (rungs)          pass"
    lines = [head]
    for metric, r in ladder.items():
        means = " ".join(f"{r['means'][s]:12.3f}" if s in r["means"] else f"{'-':>12s}" for s in sets)
        wins = " ".join(f"{g['win_rate']:.2f}" for g in r["rungs"])
        lines.append(f"{metric:22s} {means}   {wins:26s} {'yes' if r['passes'] else 'NO'}")
    return "\n".join(lines)
