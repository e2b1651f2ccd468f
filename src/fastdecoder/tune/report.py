"""``fastdecoder tune report``: best value and parameters, DIR/best.yaml, a table of trials, PNG plots.

best.yaml is the config the best trial trained (the study's base config with its parameters applied, as given
to the trials: a synthetic data section stays synthetic), which ``fastdecoder train --config`` takes. The table
lists every trial's state, value, steps trained and reason; the counts by outcome (complete, pruned by the pruner,
pruned for blank collapse, pruned as non-finite, failed, lost workers) are in ``counts``. Plots (matplotlib):
optimization history, parameter importances (fANOVA; needs two complete trials and a varied parameter) and parallel
coordinates, as DIR/plots/*.png. Opening the study also fails stale trials of dead workers (journal storages).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import yaml

from fastdecoder.errors import UserError
from fastdecoder.tune.space import apply_params
from fastdecoder.tune.storage import fail_stale, heartbeats, open_storage, open_study, require_optuna

log = logging.getLogger("fastdecoder.tune")


def reason_kind(state: str, reason: str) -> str:
    """The outcome class a trial is counted under in the report."""
    if state == "COMPLETE":
        return "complete"
    if state in ("RUNNING", "WAITING"):
        return state.lower()
    for prefix, kind in (("blank collapse", "collapsed"), ("non-finite", "non_finite"), ("diverged", "diverged"),
                         ("pruned", "pruned"),
                         ("lost", "lost"), ("surplus", "surplus"), ("invalid config", "invalid_config"),
                         ("interrupted", "interrupted")):
        if reason.startswith(prefix):
            return kind
    return "pruned" if state == "PRUNED" else "failed"


def collect(study) -> dict:
    """The report of a loaded study as a dict (no files written)."""
    from optuna.trial import TrialState

    rows, counts = [], {}
    for t in study.get_trials(deepcopy=False):
        reason = str(t.user_attrs.get("reason", "")) if t.state != TrialState.COMPLETE else ""
        steps = t.user_attrs.get("steps")
        if steps is None and t.intermediate_values:
            steps = max(t.intermediate_values)
        kind = reason_kind(t.state.name, reason)
        counts[kind] = counts.get(kind, 0) + 1
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "steps": steps, "reason": reason,
                     "outcome": kind, "params": t.params, "run_dir": t.user_attrs.get("run_dir"),
                     "config_params": t.user_attrs.get("config_params", t.params)})
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None and math.isfinite(r["value"])]
    best = min(complete, key=lambda r: (r["value"], r["number"])) if complete else None
    return {"study": study.study_name, "trials": rows, "counts": counts, "best": best}


def write_report(out: Path | None, storage_url: str | None, study_name: str, *, grace: float = 60.0,
                 plots: bool = True) -> dict:
    """Open the study, fail stale trials, write DIR/best.yaml, DIR/report.json and DIR/plots/*.png."""
    require_optuna()
    storage = open_storage(storage_url, out, heartbeat_interval=max(1, int(grace // 3)), grace=max(2, int(grace)))
    study = open_study(storage, study_name, create=False)
    fail_stale(study, heartbeats(storage_url, out, study_name), grace)
    rep = collect(study)
    if out is None:
        return rep
    out.mkdir(parents=True, exist_ok=True)
    if rep["best"] is not None:
        base = study.user_attrs.get("base_config")
        if base is None:
            raise UserError(f"study '{study_name}' was not written by fastdecoder tune (no base config)")
        cfg = apply_params(json.loads(base), rep["best"]["config_params"])  # sampled and fixed keys
        cfg["name"] = f"{cfg.get('name', 'tuned')}-trial{rep['best']['number']}"
        text = (f"# best trial {rep['best']['number']} of study '{study_name}': validation PER "
                f"{rep['best']['value']:.4f}\n" + yaml.safe_dump(cfg, sort_keys=False))
        (out / "best.yaml").write_text(text)
        rep["best_yaml"] = str(out / "best.yaml")
    if plots:
        rep["plots"] = write_plots(study, out / "plots")
    (out / "report.json").write_text(json.dumps(rep, indent=2, default=str))
    return rep


def write_plots(study, folder: Path) -> dict:
    """PNG plots of the study: name -> path written, or the reason it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm
    except ImportError as e:
        return {"all": f"skipped: matplotlib is missing ({e}); pip install 'fastdecoder[tune]'"}
    import warnings

    folder.mkdir(parents=True, exist_ok=True)
    done = {}
    for name, fn in (("history", ovm.plot_optimization_history), ("importances", ovm.plot_param_importances),
                     ("parallel_coordinates", ovm.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
                ax = fn(study)
            fig = ax.flatten()[0].figure if hasattr(ax, "flatten") else ax.figure
            fig.set_size_inches((14, 6) if name == "parallel_coordinates" else (9, 5))
            fig.tight_layout()
            path = folder / f"{name}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            done[name] = str(path)
        except Exception as e:  # noqa: BLE001 - e.g. importances with fewer than two complete trials
            done[name] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return done


def format_report(rep: dict) -> str:
    lines = [f"study '{rep['study']}': {len(rep['trials'])} trials; "
             + ", ".join(f"{k} {v}" for k, v in sorted(rep["counts"].items()))]
    b = rep["best"]
    if b is None:
        lines.append("no complete trial yet")
    else:
        lines.append(f"best: trial {b['number']}, validation PER {b['value']:.4f}, after {b['steps']} steps")
        lines += [f"  {k}: {v}" for k, v in b["params"].items()]
        if rep.get("best_yaml"):
            lines.append(f"best config: {rep['best_yaml']} (fastdecoder train --config {rep['best_yaml']} --out RUN)")
    lines.append(f"{'trial':>5}  {'state':<8} {'value':>7} {'steps':>6}  reason")
    for r in rep["trials"]:
        v = f"{r['value']:.4f}" if isinstance(r["value"], float) else "-"
        s = str(r["steps"]) if r["steps"] is not None else "-"
        lines.append(f"{r['number']:>5}  {r['state']:<8} {v:>7} {s:>6}  {r['reason']}")
    for name, p in (rep.get("plots") or {}).items():
        lines.append(f"plot {name}: {p}")
    return "\n".join(lines)
