"""``DIR/curves.png``: loss, PER (and each session's validation PER), LR, grad norm and blank fraction against step,
from ``DIR/metrics.jsonl``.

Skipped updates and LR reductions are marked on every panel. Needs matplotlib (the ``plot`` extra).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from fastdecoder.errors import UserError, writing


class PlotUnavailable(ImportError):
    """matplotlib is not installed."""


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file (a torn last line from a crash is ignored)."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "step" in rec:
                out.append(rec)
    return out


def _series(recs: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in recs:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def _day_names(recs: list[dict]) -> list[str]:
    """The sessions named in the records' ``val_per_day`` maps, in first-seen order."""
    names: dict[str, None] = {}
    for r in recs:
        if isinstance(r.get("val_per_day"), dict):
            names.update(dict.fromkeys(r["val_per_day"]))
    return list(names)


def _day_series(recs: list[dict], day: str) -> tuple[list[int], list[float]]:
    return _series([{"step": r["step"], "per": r["val_per_day"].get(day)} for r in recs
                    if isinstance(r.get("val_per_day"), dict)], "per")
def _image_path(run_dir: Path, out) -> Path:
    """``out`` (default ``run_dir/curves.png``), checked before plotting: an image file name whose suffix names a
    format matplotlib writes (without one it would add ``.png`` and write another file than the one named)."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(out) if out is not None else run_dir / "curves.png"
    formats = set(FigureCanvasBase.get_supported_filetypes()) - {"pgf"}  # pgf needs a TeX installation
    if out.is_dir():
        raise UserError(f"cannot write the plot to {out}: it is a folder (give an image file name, e.g. curves.png)")
    if out.suffix[1:].lower() not in formats:
        raise UserError(f"cannot write the plot to {out}: the name must end in an image format's suffix "
                        f"({', '.join('.' + f for f in sorted(formats))})")
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the curves of ``run_dir`` to ``out`` (default ``run_dir/curves.png``); returns the path."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{metrics} does not exist: is {run_dir} a run folder written by 'fastdecoder train'?")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotUnavailable("plotting needs matplotlib: pip install 'fastdecoder[plot]' (or pip install "
                              "matplotlib)") from e
    out = _image_path(run_dir, out)
    recs = read_metrics(metrics)
    train = [r for r in recs if "loss" in r and "event" not in r]
    evals = [r for r in recs if "val_per" in r]
    events = [r for r in recs if "event" in r]
    skips = [r["step"] for r in events if r["event"] == "skipped_update"]
    reductions = [r["step"] for r in events if r["event"] in ("lr_reduction", "plateau_reduction")]
    resumes = [r["step"] for r in events if r["event"] == "resume"]

    fig, axes = plt.subplots(5, 1, figsize=(9, 13), sharex=True)
    ax = axes[0]
    ax.plot(*_series(train, "loss"), label="train loss", lw=1.2)
    ax.plot(*_series(evals, "val_loss"), "o-", label="validation loss", ms=3)
    ax.set_ylabel("CTC loss")
    ax = axes[1]
    ax.plot(*_series(evals, "val_per"), "o-", color="C2", label="validation PER (greedy)", ms=3)
    for k, day in enumerate(_day_names(evals)):
        ax.plot(*_day_series(evals, day), color="C7", alpha=0.35, lw=0.7, label="per day (session)" if k == 0 else None)
    ax.set_ylabel("PER")
    ax = axes[2]
    ax.plot(*_series(train, "lr"), color="C3", label="learning rate")
    ax.set_ylabel("LR")
    ax = axes[3]
    xs, ys = _series(train, "grad_norm")
    ax.plot(xs, ys, color="C4", label="grad norm (mean over log interval)")
    xm, ym = _series(train, "grad_norm_max")
    if xm:
        ax.plot(xm, ym, color="C4", alpha=0.35, lw=0.8, label="grad norm (max over log interval)")
    if any(y > 0 for y in ys + ym):
        ax.set_yscale("log")
    ax.set_ylabel("grad norm (pre-clip)")
    ax = axes[4]
    ax.plot(*_series(evals, "blank_fraction"), "o-", color="C5", label="validation blank fraction", ms=3)
    ax.plot(*_series(train, "train_blank_fraction"), color="C6", alpha=0.6, label="training-batch blank fraction")
    ax.set_ylabel("blank fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    for k, a in enumerate(axes):  # event markers on every panel, named in the first panel's legend
        for i, s in enumerate(skips):
            a.axvline(s, color="red", alpha=0.3, lw=0.8, label="skipped update" if i == 0 and k == 0 else None)
        for i, s in enumerate(reductions):
            a.axvline(s, color="black", ls="--", alpha=0.6, lw=0.9, label="LR reduction" if i == 0 and k == 0 else None)
        for i, s in enumerate(resumes):
            a.axvline(s, color="gray", ls=":", alpha=0.8, lw=0.9, label="resumed" if i == 0 and k == 0 else None)
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(loc="best", fontsize=8)
    fig.suptitle(f"{run_dir.name}: {len(train)} log steps, {len(evals)} evaluations, {len(skips)} skipped updates")
    fig.tight_layout()
    with writing(out, "plot"):
        fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
