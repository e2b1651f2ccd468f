"""``fastdecoder tune``, ``fastdecoder tune report`` and ``fastdecoder lr-find``: parsers and handlers."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastdecoder.arggroups import add_config_source, overrides_of
from fastdecoder.errors import UserError

TUNE_HELP = """hyperparameter search with Optuna (pip install 'fastdecoder[tune]').

  fastdecoder tune --config CONFIG --space SPACE --trials N --out DIR [options]
  fastdecoder tune report DIR  |  fastdecoder tune report --storage URL --study NAME [--out DIR]

--trials is the study's total: start any number of workers with the same arguments; each stops when the study
holds N finished trials. Storage (--storage):
  (default)                the journal file DIR/journal.log: no server; workers on one machine or sharing DIR
  postgresql://U:P@H/DB    PostgreSQL through psycopg 3 (in the [tune] extra); Optuna's heartbeat
  mysql://... | mysql+pymysql://...   MySQL (untested); its driver (mysqlclient or PyMySQL) is not in the extras
  sqlite:///PATH           one machine
  redis://H:PORT/DB        Optuna's journal in Redis (redis package in the [tune] extra); heartbeats in Redis too
With a server, --out holds each machine's trial folders. Each trial is a normal run folder DIR/trials/trial_NNNN
(eval --run takes it). The objective is the best validation PER over the trial's evaluations, reported at every
evaluation to the pruner. Trials that go non-finite past the stability guard, whose validation loss passes --diverge
x the untrained model's, or that collapse to blanks (the collapse monitor's rule, from stability.monitor_after_steps
on) are pruned, trials that raise are failed, each with the reason in its user attribute 'reason'. A killed worker's
trial is marked failed within --heartbeat-grace + --heartbeat-interval seconds while any worker of the study runs
(--retry N: tried again).

--members K: each worker asks K trials at once and trains them as the K members of one batched model (one
'train.members: K' run in DIR/trials/batch_NNNN; DIR/trials/trial_NNNN links its member's folder). Member i has
trial i's values, train.seed = the config's seed + i (unless the space sets it) and the config's data seed
(recorded in the trial, so best.yaml reproduces it); each member's evaluations go to its own trial and a pruned,
diverged or collapsed member stops while the others train on. Members may differ only in seeds, dropout,
augmentation, optimizer, schedule and stability-guard keys (fastdecoder.config.OVERRIDABLE): trials that differ in
another key (model size, batch size, steps, data, ...), or a config the batched trainer refuses, are trained one
after another, with a line saying why."""


def add_tune(sub) -> None:
    p = sub.add_parser("tune", help="hyperparameter search with Optuna (tune report: best config, table, plots)",
                       description=TUNE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=cmd_tune)
    p.add_argument("--config", help="YAML file or preset name every trial starts from")
    p.add_argument("--space", help="search space YAML file, or an example space's name (demo, b2t25, b2t24: "
                                    "src/fastdecoder/tune/spaces/)")
    p.add_argument("--trials", type=int, help="the study's total number of trials (shared by all workers)")
    p.add_argument("--out", help="study folder: journal.log, trials/trial_NNNN run folders, report")
    p.add_argument("--study", default="tune", help="study name (default: tune)")
    p.add_argument("--storage", default=None,
                   help="postgresql://, mysql://, sqlite:/// or redis:// URL (default: the journal file "
                        "DIR/journal.log; see above)")
    p.add_argument("--lr-range", default=None, metavar="LR_FIND_JSON",
                   help="sample optim.lr log-uniformly from a tenth to ten times the suggestion of this "
                        "'fastdecoder lr-find' result (capped where its ramp diverged), replacing the space's entry")
    p.add_argument("--members", type=int, default=1, metavar="K",
                   help="ask K trials at once and train them as the K members of one batched model (see above; "
                        "default 1)")
    add_config_source(p, data=False)
    p.add_argument("--objective", default="greedy", choices=["greedy", "beam"],
                   help="validation PER of the greedy decoder (default) or of the native beam search")
    p.add_argument("--beam-width", type=int, default=20)
    p.add_argument("--pruner", default="hyperband", choices=["hyperband", "halving", "median", "none"],
                   help="hyperband (default), successive halving, median, or none")
    p.add_argument("--min-resource", type=int, default=None,
                   help="steps a trial trains before it can be pruned (default: train.eval_every)")
    p.add_argument("--diverge", type=float, default=3.0,
                   help="prune a trial whose validation loss exceeds this x the untrained model's (0: off)")
    p.add_argument("--reduction-factor", type=int, default=3, help="hyperband / halving reduction factor")
    p.add_argument("--heartbeat-interval", type=int, default=10, help="seconds between a running trial's heartbeats")
    p.add_argument("--heartbeat-grace", type=int, default=60,
                   help="seconds without a heartbeat after which a running trial is marked failed")
    p.add_argument("--retry", type=int, default=0, help="retry a trial whose worker died up to N times")
    p.add_argument("--no-baseline", action="store_true",
                   help="do not make the config's own values of the space's keys the first trial")
    p.add_argument("--sampler-seed", type=int, default=None, help="seed of the TPE sampler (reproducible with one worker; give each worker its "
                        "own, or workers propose the same parameters)")
    p.add_argument("--progress", action="store_true", help="progress bar per trial")
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)


def add_lr_find(sub) -> None:
    p = sub.add_parser("lr-find", help="LR range test: exponential LR ramp on the real loss and optimizer; "
                                       "loss-vs-LR plot and a suggested LR",
                       description="Trains with the LR growing exponentially from --start to --end over at most "
                                   "--steps steps (the config's schedule ignored; Adam's eps is --eps, default "
                                   "1e-8, not the config's), stops when the smoothed loss exceeds --diverge times "
                                   "its minimum or turns NaN, and restores the model. The suggestion is the LR of "
                                   "the steepest descent of the smoothed loss over log10(LR) before its minimum.")
    p.set_defaults(handler=cmd_lr_find)
    p.add_argument("--config", required=True, help="YAML file or preset name")
    add_config_source(p)
    p.add_argument("--start", type=float, default=1e-6, help="first LR")
    p.add_argument("--end", type=float, default=10.0, help="last LR")
    p.add_argument("--steps", type=int, default=100, help="steps of the ramp")
    p.add_argument("--eps", default="1e-8", help="Adam's eps during the ramp, or 'config' for the config's")
    p.add_argument("--diverge", type=float, default=4.0, help="stop when the smoothed loss exceeds this x its minimum")
    p.add_argument("--out", default="lr_find", help="folder for lr_find.png and lr_find.json")


def cmd_tune(args) -> int:
    if args.rest:
        if args.rest[0] != "report":
            raise UserError(f"unknown tune command {args.rest[0]!r} (did you mean 'tune report DIR'?)")
        return _cmd_report(args, args.rest[1:])
    from fastdecoder.tune.space import load_space, with_lr_range
    from fastdecoder.tune.study import TuneSettings, tune

    for name in ("config", "space", "trials", "out"):
        if getattr(args, name) is None:
            raise UserError(f"--{name} is required (fastdecoder tune --config C --space S --trials N --out DIR)")
    space = load_space(args.space)
    if args.lr_range:
        space = with_lr_range(space, args.lr_range)
    s = TuneSettings(config=args.config, space=space, trials=args.trials, out=Path(args.out),
                     study_name=args.study, storage=args.storage, overrides=list(args.overrides),
                     members=args.members, objective=args.objective, beam_width=args.beam_width,
                     diverge=args.diverge, pruner=args.pruner,
                     min_resource=args.min_resource, reduction_factor=args.reduction_factor,
                     heartbeat_interval=args.heartbeat_interval, grace=args.heartbeat_grace, retry=args.retry,
                     baseline=not args.no_baseline, sampler_seed=args.sampler_seed)
    _quiet_optuna()
    done = tune(s, progress=args.progress, say=lambda m: print(m, flush=True))
    print(f"this worker: {json.dumps(done)}; report: fastdecoder tune report {args.out}", flush=True)
    return 0


def _cmd_report(args, rest: list) -> int:
    from fastdecoder.tune.report import format_report, write_report

    if len(rest) > 1:
        raise UserError(f"tune report takes one study folder, got {' '.join(rest)}")
    out = Path(rest[0]) if rest else (Path(args.out) if args.out else None)
    if out is None and args.storage is None:
        raise UserError("tune report needs the study folder (tune report DIR) or --storage URL --study NAME")
    if out is not None and args.storage is None and not (out / "journal.log").is_file():
        raise UserError(f"{out} holds no study (no journal.log); pass --storage URL for a database study")
    _quiet_optuna()
    rep = write_report(out, args.storage, args.study, grace=args.heartbeat_grace)
    print(format_report(rep))
    return 0


def cmd_lr_find(args) -> int:
    from fastdecoder.config import load_config
    from fastdecoder.tune.lr_find import lr_find_config

    cfg = load_config(args.config, overrides_of(args))
    if args.eps == "config":
        eps = None
    else:
        try:
            eps = float(args.eps)
        except ValueError:
            raise UserError(f"--eps must be a number or 'config', got {args.eps!r}") from None
    res = lr_find_config(cfg, Path(args.out), start=args.start, end=args.end, steps=args.steps, eps=eps,
                         diverge=args.diverge)
    print(res.describe())
    return 0


def _quiet_optuna() -> None:
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    except ImportError:
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: fastdecoder tune | fastdecoder lr-find")
