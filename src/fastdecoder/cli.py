"""Command line: ``fastdecoder train | eval | stream | plot | data | bench | lm | config | parity | serve | replay |
tune | lr-find``.

Multi-GPU: ``torchrun --nproc_per_node N -m fastdecoder.cli train ...`` (same arguments) trains with
DistributedDataParallel; rank 0 prints, logs and writes the run folder.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields, replace
from pathlib import Path

from fastdecoder._native import MAX_BEAM_WIDTH
from fastdecoder.arggroups import (add_config_source, add_word_decoding, check_word_files, check_word_options,
                                   overrides_of, word_decoder)
from fastdecoder.argtypes import finite_float, int_at_least, int_in
from fastdecoder.errors import UserError, writing

# the parity command's choices (fastdecoder.parity's OPS and DTYPES, which a test keeps equal), here so that
# building the parser imports no torch
PARITY_OPS = ("augment", "ln_gru", "train_step", "decoders")
PARITY_DTYPES = ("bf16", "fp32")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run its command's handler; the exit status (2: bad input, one ``error:`` line)."""
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0") or 0)
    level = logging.DEBUG if args.verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(level=level, format=f"%(levelname)s {'' if rank == 0 else f'[rank {rank}] '}%(message)s")
    try:
        return args.handler(args)
    except (UserError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError) as e:
        # what the user gave is wrong (the message names it); anything else is a bug and keeps its traceback
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        # a run stopped by the stability guard: only a command that trained can raise it (and has imported it)
        stability = sys.modules.get("fastdecoder.train.stability")
        if stability is None or not isinstance(e, stability.NonFiniteError):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 3


def build_parser() -> argparse.ArgumentParser:
    """Every command's parser; each ``add_*`` adds one command and names its handler (``set_defaults(handler=)``)."""
    from fastdecoder import __version__
    from fastdecoder.serve import cli as serve_cli
    from fastdecoder.tune import cli as tune_cli

    parser = _Parser(prog="fastdecoder", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"fastdecoder {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for add in (add_train, add_eval, add_plot, add_data, add_bench, add_lm, add_stream, add_config, add_parity,
                serve_cli.add_serve, serve_cli.add_replay, tune_cli.add_tune, tune_cli.add_lr_find):
        add(sub)
    return parser


# -- parsers -----------------------------------------------------------------------------------------------------------
def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a decoder from a config (preset name or YAML file)")
    p.set_defaults(handler=cmd_train)
    p.add_argument("--config", default=None,
                   help="YAML file or preset name (b2t25, b2t24, demo); with --resume optional (default: the "
                        "checkpoint's config; if given it must match it except train.steps)")
    p.add_argument("--out", default=None, help="run folder for config, checkpoints, metrics, summary, train.log "
                   "(default: runs/<config name>-<date>-<time>, printed)")
    p.add_argument("--init-from", default=None, metavar="RUN_OR_CHECKPOINT",
                   help="calibration: start from this run folder's (or checkpoint's) weights, day layers matched by "
                        "session name (sets train.init_from; see also data.sessions, model.rnn_trainable, "
                        "model.input_trainable, train.early_stopping)")
    add_config_source(p)
    p.add_argument("--overwrite", action="store_true", help="clear --out first if it holds an earlier run")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last.pt (schedule, optimizer, RNGs, data position)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (a log line every log_every steps)")
    p.add_argument("--members", type=int, default=None, metavar="K",
                   help="train K models as one batched model (train.members): --out gets member-0 .. member-K-1, "
                        "each a normal run folder, and a summary with the members' and the ensemble's PER")


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained run on a split")
    p.set_defaults(handler=cmd_eval)
    p.add_argument("--run", required=True, action="append",
                   help="run folder written by 'fastdecoder train --out'; repeat (--run A --run B) to decode the "
                        "ensemble (mean of the runs' per-frame posteriors)")
    p.add_argument("--checkpoint", default="best", help="best | last | a file name in the run folder")
    p.add_argument("--split", default="val", help="val | test | train")
    p.add_argument("--data", help="data path (default: the one the run was trained on)")
    p.add_argument("--decoder", default="greedy", choices=["greedy", "beam"])
    p.add_argument("--beam-width", type=int_in(1, MAX_BEAM_WIDTH), default=20)
    p.add_argument("--device", default="cpu")
    add_word_decoding(p)
    p.add_argument("--nbest", type=int_at_least(1), default=None,
                   help="with --rescore-lm / --tune-weights / --rescore-weights / --save-nbest: hypotheses per "
                        "sentence, at most --word-beam-width (default: --word-beam-width)")
    p.add_argument("--rescore-lm", default=None,
                   help="with --lm: rescore the n-best lists with this causal LM (a local folder or Hugging Face "
                        "name; needs pip install 'fastdecoder[llm]') and report WER before and after")
    p.add_argument("--rescore-weight", type=finite_float, default=0.5,
                   help="weight b of the neural LM log-probability")
    p.add_argument("--rescore-ngram-weight", type=finite_float, default=None,
                   help="weight a of the n-gram LM log-probability in rescoring (default: --lm-weight)")
    p.add_argument("--rescore-word-bonus", type=finite_float, default=None,
                   help="weight c of the word count in rescoring (default: --word-bonus)")
    p.add_argument("--rescore-batch-size", type=int_at_least(1), default=32)
    p.add_argument("--rescore-device", default=None, help="device of the neural LM (default: cuda if available)")
    p.add_argument("--tune-weights", action="store_true",
                   help="with --lm on a labelled split: grid-search (a, b, c) on its n-best lists, report the best "
                        "and save them (--save-weights) for --rescore-weights on another split")
    p.add_argument("--save-weights", default=None, metavar="FILE",
                   help="with --tune-weights: where to write the weights found (default: RUN/rescore_weights.json)")
    p.add_argument("--rescore-weights", default=None, metavar="FILE",
                   help="with --lm: pick each sentence from the n-best list by the weights in FILE (written by "
                        "--tune-weights, e.g. on val) instead of --rescore-ngram-weight / --rescore-weight / "
                        "--rescore-word-bonus")
    p.add_argument("--submission", default=None, metavar="FILE",
                   help="with --lm: write the decoded sentences as a competition submission file (use --split test)")
    p.add_argument("--format", default=None, choices=["b2t25", "b2t24"],
                   help="submission format: b2t25 (CSV 'id,text', Kaggle) or b2t24 (one sentence per line, EvalAI); "
                        "default: the data's format")
    p.add_argument("--save-logits", default=None, metavar="FILE.npz",
                   help="write the per-trial log-probabilities (the ensemble's with several runs), frame counts, "
                        "sessions and trial indices")
    p.add_argument("--save-nbest", default=None, metavar="FILE.jsonl",
                   help="with --lm: write per trial the n-best sentences (acoustic, n-gram, neural, total scores) "
                        "and the beam search's n-best phoneme strings")


def add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw DIR/curves.png (loss, PER, LR, grad norm, blank fraction) of a run")
    p.set_defaults(handler=cmd_plot)
    p.add_argument("run", help="run folder written by 'fastdecoder train --out'")
    p.add_argument("--out", default=None,
                   help="image file to write, .png / .pdf / .svg / ... (default: RUN/curves.png)")


def add_data(sub) -> None:
    p = sub.add_parser("data", help="data utilities")
    p.set_defaults(handler=cmd_data)
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("synth", help="write a synthetic dataset in a real file format")
    s.add_argument("--format", required=True, choices=["b2t24", "b2t25"])
    s.add_argument("--out", required=True, help="pickle file (b2t24) or folder (b2t25) to write")
    s.add_argument("--days", type=int_at_least(1), default=None)
    s.add_argument("--trials-per-day", type=int_at_least(1), default=None)
    s.add_argument("--features", type=int_at_least(1), default=None)
    s.add_argument("--seed", type=int_at_least(0), default=0)
    i = dsub.add_parser("info", help="summarise a dataset file or folder")
    i.add_argument("path")


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks a user runs on their own machine")
    p.set_defaults(handler=cmd_bench)
    bsub = p.add_subparsers(dest="bench_cmd", required=True)
    t = bsub.add_parser("train", help="fast path vs reference path, per path: batches/s, ms per step in data / "
                        "forward / backward / optimizer, host reads and (CUDA) device syncs per step, compiles, CUDA "
                        "graph captures, peak GPU memory; their ratio and loss agreement")
    t.add_argument("--config", required=True, help="YAML file or preset name")
    t.add_argument("--steps", type=int, default=None,
                   help="timed steps per path (default 50; with --members: steps per block, default 5)")
    t.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, cuDNN autotuning)")
    t.add_argument("--synthetic", action="store_true",
                   help="synthetic data with the preset's real feature width instead of the config's data")
    add_config_source(t)
    t.add_argument("--json", help="also write the full result (losses included) to this file")
    t.add_argument("--members", type=int, default=None, metavar="K",
                   help="instead: K members trained as one batched model vs K separate runs, member-steps/s, "
                        "timed in interleaved blocks of --steps steps (the ratio's spread over the blocks)")
    t.add_argument("--blocks", type=int, default=6, help="with --members: interleaved blocks per path")


def add_lm(sub) -> None:
    p = sub.add_parser("lm", help="language models for word decoding")
    p.set_defaults(handler=cmd_lm)
    lsub = p.add_subparsers(dest="lm_cmd", required=True)
    b = lsub.add_parser("build", help="estimate a modified Kneser-Ney n-gram LM from a sentence corpus")
    b.add_argument("--text", required=True, help="corpus: one sentence per line (plain or .gz)")
    b.add_argument("--order", type=int, default=3, help="n-gram order, 1..10 (default 3)")
    b.add_argument("--out", required=True, help="ARPA file to write (.gz: compressed); its folder must exist")


def add_stream(sub) -> None:
    p = sub.add_parser("stream", help="replay a split through the streaming decoder (latency, real-time factor, "
                                      "PER/WER)")
    p.set_defaults(handler=cmd_stream)
    p.add_argument("--run", required=True, help="run folder written by 'fastdecoder train --out'")
    p.add_argument("--checkpoint", default="best", help="best | last | a file name in the run folder")
    p.add_argument("--split", default="val", help="val | test | train")
    p.add_argument("--data", help="data path (default: the one the run was trained on)")
    p.add_argument("--beam-width", type=int_in(1, MAX_BEAM_WIDTH), default=20)
    p.add_argument("--hop", type=int_at_least(1), default=4, help="bins per push (4 = 80 ms)")
    p.add_argument("--realtime", action="store_true", help="pace the pushes at 20 ms per bin")
    p.add_argument("--max-trials", type=int_at_least(1), default=None, help="replay the first N trials only")
    p.add_argument("--quiet", action="store_true", help="do not print the words as they firm up")
    p.add_argument("--device", default="cpu")
    add_word_decoding(p)


def add_config(sub) -> None:
    p = sub.add_parser("config", help="inspect configs")
    p.set_defaults(handler=cmd_config)
    csub = p.add_subparsers(dest="config_cmd", required=True)
    s = csub.add_parser("show", help="print a resolved config as YAML (its base: chain, --set overrides and every "
                        "default filled in): what 'train --config NAME' would use")
    s.add_argument("name", help="preset name (b2t25, b2t24, demo) or YAML file")
    add_config_source(s, data=False)


def add_parity(sub) -> None:
    p = sub.add_parser("parity", help="every fast path against its reference on this device (table; exit 1 on a fail)")
    p.set_defaults(handler=cmd_parity)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: cuda when available)")
    p.add_argument("--dtype", action="append", choices=PARITY_DTYPES, default=None,
                   help="fp32 (default) and/or bf16 (repeat the flag for both)")
    p.add_argument("--ops", default=",".join(PARITY_OPS), help=f"comma-separated subset of {','.join(PARITY_OPS)}")
    p.add_argument("--seed", type=int_in(0, 2**32 - 1), default=None,
                   help="input seed, 0 .. 2**32-1 (default: a fresh one, printed)")
    p.add_argument("--quick", action="store_true", help="one shape per op, a short train-step check (smoke tests)")
    p.add_argument("--json", help="also write the rows to this JSON file")


# -- handlers ----------------------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from fastdecoder.config import apply_overrides, config_from_dict, load_config
    from fastdecoder.train import distributed
    from fastdecoder.checkpoint import check_resumable, load_checkpoint
    from fastdecoder.train.outputs import default_run_dir
    from fastdecoder.train.trainer import Trainer

    info = distributed.env_info()
    overrides = overrides_of(args)
    if args.init_from:
        if args.resume:
            raise UserError("--init-from starts a new run from another run's weights; --resume continues this one")
        overrides.append(f"train.init_from={json.dumps(str(Path(args.init_from).resolve()))}")
    out = Path(args.out) if args.out else None
    if getattr(args, "members", None) is not None:
        if args.members < 1:
            raise UserError(f"--members must be >= 1, got {args.members}")
        overrides.append(f"train.members={args.members}")
    if out is not None and args.resume and (out / "member-0" / "last.pt").is_file():
        return _train_members(args, out, overrides)
    if not args.resume and args.config and load_config(args.config, overrides).train.members > 1:
        return _train_members(args, out, overrides)
    state = None
    if args.resume:
        if args.overwrite:
            raise UserError("--resume and --overwrite conflict: --resume continues the run in --out, --overwrite "
                             "deletes it")
        if out is None:
            raise UserError("--resume needs --out DIR, the run folder holding last.pt")
        state = load_checkpoint(out / "last.pt")  # names the file if missing, corrupt or foreign; touches nothing
        check_resumable(state, out / "last.pt")
        cfg = (load_config(args.config, overrides) if args.config
               else config_from_dict(apply_overrides(state["config"], overrides)))
    else:
        if not args.config:
            raise UserError("--config is required (a preset name or YAML file), unless --resume continues a run")
        cfg = load_config(args.config, overrides)
        if out is None and info.enabled:
            raise UserError("under torchrun pass --out DIR: every process must name the same run folder")
        if out is None:
            out = default_run_dir(cfg.name)
            if info.is_main:
                print(f"no --out given: writing the run to {out}", flush=True)
        if out.exists() and (any(out.glob("*.pt")) or (out / "metrics.jsonl").exists()):
            if not args.overwrite:
                raise UserError(f"{out} already holds a run (checkpoints or metrics found); pass --overwrite "
                                f"to replace it, --resume to continue it, or choose another --out")
    # the Trainer creates (and with --overwrite clears) the run folder only once the data has loaded
    trainer = Trainer(cfg, out, progress=not args.no_progress, resume=state if state is not None else False,
                      overwrite=bool(args.overwrite and info.is_main))
    try:
        if info.is_main:
            what = f"resuming '{cfg.name}' at step {trainer.step}" if state is not None else f"training '{cfg.name}'"
            ranks = f" x {info.world_size} processes" if info.enabled else ""
            print(f"{what} on {trainer.cfg.data.path} ({trainer.dataset.format}, "
                  f"{trainer.dataset.n_days} days, {trainer.dataset.n_features} features, "
                  f"{len(trainer.train_split)} training trials) on {trainer.device}{ranks}", flush=True)
        summary = trainer.fit()
    except BaseException:
        distributed.cleanup(sync=False)
        raise
    distributed.cleanup()
    if not info.is_main:
        # A worker rank has nothing left to write. Leave without interpreter finalization: gloo's worker threads can
        # still hold tensors then, and tearing them down there aborts the process ("terminate called without an
        # active exception", seen on busy 2-core machines) although training finished.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    print(_json_text(summary))
    if summary.get("val_per") is not None:
        beam = summary.get("val_per_beam")
        extra = f", beam search (width {summary['beam_width']}) {beam:.4f}" if beam is not None else ""
        print(f"validation PER: greedy {summary['val_per']:.4f}{extra}")
    _say_how_to_resume(summary, out)
    return 0


def _say_how_to_resume(summary: dict, out: Path | None) -> None:
    if summary.get("interrupted"):
        where = f" --out {out}" if out is not None else ""
        print(f"interrupted at step {summary['steps']} ({summary['interrupted']}); continue with: "
              f"fastdecoder train{where} --resume", flush=True)


def _train_members(args, out: Path | None, overrides: list[str]) -> int:
    """``train`` with train.members > 1 (or --resume of such a run): fastdecoder.train.members."""
    import shutil

    from fastdecoder.config import load_config
    from fastdecoder.train.members import MembersTrainer
    from fastdecoder.train.outputs import clear_run, default_run_dir

    if args.resume:
        if args.overwrite:
            raise UserError("--resume and --overwrite conflict: --resume continues the run in --out, --overwrite "
                            "deletes it")
        cfg = load_config(args.config or out / "config.yaml", overrides)
    else:
        cfg = load_config(args.config, overrides)
        if out is None:
            out = default_run_dir(cfg.name)
            print(f"no --out given: writing the run to {out}", flush=True)
        if out is not None and (any(out.glob("member-*")) or any(out.glob("*.pt"))
                                or (out / "metrics.jsonl").exists()):
            if not args.overwrite:
                raise UserError(f"{out} already holds a run; pass --overwrite to replace it, --resume to continue "
                                "it, or choose another --out")
            for d in out.glob("member-*"):
                shutil.rmtree(d, ignore_errors=True)
            clear_run(out)
    trainer = MembersTrainer(cfg, out, progress=not args.no_progress, resume=bool(args.resume))
    what = f"resuming at step {trainer.step}" if args.resume else "training"
    print(f"{what} {trainer.k} members of '{cfg.name}' as one batched model on {trainer.cfg.data.path} "
          f"({len(trainer.train_split)} training trials) on {trainer.device}", flush=True)
    summary = trainer.fit()
    print(_json_text(summary))
    if summary.get("ensemble_val_per") is not None:
        pers = ", ".join(f"{m.get('val_per_best', float('nan')):.4f}" for m in summary["member"])
        print(f"validation PER (best.pt): members {pers}; ensemble {summary['ensemble_val_per']:.4f}")
    _say_how_to_resume(summary, out)
    return 0


def cmd_eval(args) -> int:
    """Score a run's checkpoint, or the ensemble of several runs, on a split (fastdecoder.eval_report)."""
    from fastdecoder.eval_report import EvalRequest, eval_report

    check_word_options(args)
    if args.save_weights and not args.tune_weights:
        raise UserError("--save-weights names the file --tune-weights writes: pass --tune-weights")
    if args.format and not args.submission:
        raise UserError("--format is the layout of the --submission file: pass --submission FILE")
    if args.nbest is not None and args.nbest > args.word_beam_width:
        raise UserError(f"--nbest {args.nbest} exceeds --word-beam-width {args.word_beam_width}: the word beam holds "
                        "at most that many sentences")
    check_word_files(args)
    # the request's fields are the options of the same names (--run gives runs)
    req = EvalRequest(runs=args.run, **{f.name: getattr(args, f.name) for f in fields(EvalRequest) if f.name != "runs"})
    report = eval_report(req, lambda ds, data_path, nbest: word_decoder(args, ds, data_path, nbest=nbest))
    print(_json_text(report))
    return 0


def cmd_plot(args) -> int:
    from fastdecoder.train.plot import PlotUnavailable, plot_run

    try:
        path = plot_run(args.run, args.out)
    except PlotUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def cmd_data(args) -> int:
    from fastdecoder.data import SynthSpec, load_dataset, write_synthetic

    if args.data_cmd == "synth":
        kw = {"seed": args.seed}
        if args.days is not None:
            kw["n_days"] = args.days
        if args.trials_per_day is not None:
            kw["trials_per_day"] = args.trials_per_day
        if args.features is not None:
            kw["n_features"] = args.features
        elif args.format == "b2t25":
            kw["n_features"] = 512
        path = write_synthetic(Path(args.out), args.format, SynthSpec(**kw))
        print(f"wrote synthetic {args.format} data to {path}")
        return 0
    ds = load_dataset(args.path)
    print(f"{args.path}: format {ds.format}, {ds.n_days} days, {ds.n_features} features")
    for name, s in ds.splits.items():
        lens = [len(f) for f in s.features]
        print(f"  {name}: {len(s)} trials, {min(lens)}-{max(lens)} bins, labels: {s.targets is not None}")
    return 0


def cmd_bench(args) -> int:
    from fastdecoder.config import load_config
    from fastdecoder.bench.train_speed import SYNTHETIC, bench_train, format_report

    if args.steps is None:
        args.steps = 5 if args.members is not None else 50
    if args.steps < 1 or args.warmup < 0:
        raise UserError("--steps must be >= 1 and --warmup >= 0")
    cfg = load_config(args.config, overrides_of(args))
    if args.synthetic:
        fmt = "b2t24" if cfg.model.patch_order == "channel_major" else "b2t25"
        cfg = replace(cfg, data=replace(cfg.data, path=None, synthetic=dict(SYNTHETIC[fmt])))
    if args.members is not None:
        from fastdecoder.bench.members_speed import bench_members, format_members_report

        if args.members < 1 or args.blocks < 1:
            raise UserError("--members and --blocks must be >= 1")
        result = bench_members(cfg, args.members, args.steps, args.blocks, args.warmup)
        print(format_members_report(result))
    else:
        result = bench_train(cfg, args.steps, args.warmup)
        print(format_report(result))
    if args.json:
        with writing(args.json):
            Path(args.json).write_text(_json_text(result))
    return 0


def cmd_lm(args) -> int:
    from fastdecoder.decode import build_lm
    from fastdecoder.limits import MAX_LM_ORDER

    if not 1 <= args.order <= MAX_LM_ORDER:
        raise UserError(f"--order must be in 1..{MAX_LM_ORDER}, got {args.order}")
    if not Path(args.text).is_file():
        raise UserError(f"corpus {args.text} does not exist")
    lm = build_lm(args.text, args.order, args.out)
    counts = ", ".join(f"{n}-grams: {c}" for n, c in enumerate(lm.counts, 1))
    print(f"wrote {args.out}: order {args.order}, {counts}")
    return 0


def cmd_stream(args) -> int:
    """Replay a split through the streaming decoder; the words as they firm up, latency, PER/WER."""
    from fastdecoder.data import load_dataset
    from fastdecoder.stream import StreamingDecoder
    from fastdecoder.stream.replay import replay
    from fastdecoder.data.selection import select_data
    from fastdecoder.checkpoint import load_run, run_data_path
    from fastdecoder.device import resolve_device

    check_word_options(args)
    check_word_files(args)
    device = resolve_device(args.device, "--device")
    cfg, model, _ = load_run(Path(args.run), args.checkpoint, device)
    data_path = run_data_path(cfg, args.run, args.data)
    ds = select_data(load_dataset(data_path, "auto"), cfg.data)  # the sessions and features the run trained on
    if args.split not in ds.splits:
        raise UserError(f"{data_path} has no '{args.split}' split (has: {', '.join(ds.splits)})")
    split = ds.splits[args.split]
    words = word_decoder(args, ds, data_path) if args.lm else None
    decoder = StreamingDecoder(model, beam_width=args.beam_width, word_decoder=words, device=device)
    show = None if args.quiet or words is None else (
        lambda i, said: print(f"[{split.trial_ids[i]}] {' '.join(said)}", flush=True))
    report = replay(decoder, split, hop=args.hop, realtime=args.realtime, max_trials=args.max_trials, on_words=show)
    out = {"run": str(args.run), "checkpoint": args.checkpoint, "split": args.split, "beam_width": args.beam_width,
           "lookahead_ms": decoder.lookahead_bins * 20, **report.as_dict()}
    print(_json_text(out))
    return 0


def cmd_config(args) -> int:
    from fastdecoder.config import show_config

    sys.stdout.write(show_config(args.name, args.overrides))
    return 0


def cmd_parity(args) -> int:
    """Every fast path against its reference on this device (fastdecoder.parity)."""
    from fastdecoder import parity

    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip())
    return parity.check(args.device, tuple(args.dtype or ["fp32"]), ops, seed=args.seed, quick=args.quick,
                        json_path=args.json)


# -- output and errors -------------------------------------------------------------------------------------------------
def _json_text(obj) -> str:
    """Valid JSON for a result: a non-finite number (an undefined rate) is written as null, never NaN/Infinity."""
    import math

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), indent=2, allow_nan=False)


class _Parser(argparse.ArgumentParser):
    """argparse with the commands' error format: one line ``error: ...`` and exit status 2 (usage: ``--help``)."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see '{self.prog} --help')\n")


def _one_line(e: BaseException) -> str:
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
