"""Command line: ``fastdecoder train | eval | plot | data | bench | lm``.

Multi-GPU: ``torchrun --nproc_per_node N -m fastdecoder.cli train ...`` (same arguments) trains with
DistributedDataParallel; rank 0 prints, logs and writes the run folder.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a decoder from a config (preset name or YAML file)")
    p.add_argument("--config", default=None,
                   help="YAML file or preset name (b2t25, b2t24, demo); with --resume optional (default: the "
                        "checkpoint's config; if given it must match it except train.steps)")
    p.add_argument("--data", help="b2t24 pickle file or b2t25 folder of session folders (overrides data.path)")
    p.add_argument("--out", default=None, help="run folder for config, checkpoints, metrics, summary")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="clear --out first if it holds an earlier run")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last.pt (schedule, optimizer, RNGs, data position)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (a log line every log_every steps)")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained run on a split")
    p.add_argument("--run", required=True, action="append",
                   help="run folder written by 'fastdecoder train --out'; repeat (--run A --run B) to decode the "
                        "ensemble (mean of the runs' per-frame posteriors)")
    p.add_argument("--checkpoint", default="best", help="best | last | a file name in the run folder")
    p.add_argument("--split", default="val", help="val | test | train")
    p.add_argument("--data", help="data path (default: the one the run was trained on)")
    p.add_argument("--decoder", default="greedy", choices=["greedy", "beam"])
    p.add_argument("--beam-width", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--lm", help="ARPA n-gram LM (plain or .gz): also decode words and report WER")
    p.add_argument("--lexicon", default=None,
                   help="with --lm: 'cmudict' (default), 'train' (read off the training split's transcripts and "
                        "phonemes), or a file of 'WORD PH PH ...' lines")
    p.add_argument("--lm-weight", type=float, default=0.5)
    p.add_argument("--word-beam-width", type=int, default=64)
    p.add_argument("--nbest", type=int, default=None,
                   help="with --rescore-lm / --tune-weights: hypotheses per sentence (default: --word-beam-width)")
    p.add_argument("--rescore-lm", default=None,
                   help="with --lm: rescore the n-best lists with this causal LM (a local folder or Hugging Face "
                        "name; needs pip install 'fastdecoder[llm]') and report WER before and after")
    p.add_argument("--rescore-weight", type=float, default=0.5, help="weight b of the neural LM log-probability")
    p.add_argument("--rescore-ngram-weight", type=float, default=None,
                   help="weight a of the n-gram LM log-probability in rescoring (default: --lm-weight)")
    p.add_argument("--rescore-word-bonus", type=float, default=0.0, help="weight c of the word count in rescoring")
    p.add_argument("--rescore-batch-size", type=int, default=32)
    p.add_argument("--rescore-device", default=None, help="device of the neural LM (default: cuda if available)")
    p.add_argument("--tune-weights", action="store_true",
                   help="with --lm: grid-search (a, b, c) on this split's n-best lists and report the best")


def _add_lm(sub) -> None:
    p = sub.add_parser("lm", help="language models for word decoding")
    lsub = p.add_subparsers(dest="lm_cmd", required=True)
    b = lsub.add_parser("build", help="estimate a modified Kneser-Ney n-gram LM from a sentence corpus")
    b.add_argument("--text", required=True, help="corpus: one sentence per line (plain or .gz)")
    b.add_argument("--order", type=int, default=3)
    b.add_argument("--out", required=True, help="ARPA file to write (.gz: compressed)")


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="draw DIR/curves.png (loss, PER, LR, grad norm, blank fraction) of a run")
    p.add_argument("run", help="run folder written by 'fastdecoder train --out'")
    p.add_argument("--out", default=None, help="image file to write (default: RUN/curves.png)")


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="data utilities")
    dsub = p.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("synth", help="write a synthetic dataset in a real file format")
    s.add_argument("--format", required=True, choices=["b2t24", "b2t25"])
    s.add_argument("--out", required=True, help="pickle file (b2t24) or folder (b2t25) to write")
    s.add_argument("--days", type=int, default=None)
    s.add_argument("--trials-per-day", type=int, default=None)
    s.add_argument("--features", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    i = dsub.add_parser("info", help="summarise a dataset file or folder")
    i.add_argument("path")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks a user runs on their own machine")
    bsub = p.add_subparsers(dest="bench_cmd", required=True)
    t = bsub.add_parser("train", help="fast path vs reference path: batches/s, ratio, peak memory, loss agreement")
    t.add_argument("--config", required=True, help="YAML file or preset name")
    t.add_argument("--steps", type=int, default=50, help="timed steps per path")
    t.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, cuDNN autotuning)")
    t.add_argument("--data", help="dataset path (default: the config's)")
    t.add_argument("--synthetic", action="store_true",
                   help="synthetic data with the preset's real feature width instead of the config's data")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    t.add_argument("--json", help="also write the full result (losses included) to this file")


def cmd_bench(args) -> int:
    from fastdecoder.config import load_config
    from fastdecoder.train.bench import SYNTHETIC, bench_train, format_report

    if args.steps < 1 or args.warmup < 0:
        raise ValueError("--steps must be >= 1 and --warmup >= 0")
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={json.dumps(args.data)}")
    cfg = load_config(args.config, overrides)
    if args.synthetic:
        fmt = "b2t24" if cfg.model.patch_order == "channel_major" else "b2t25"
        cfg = replace(cfg, data=replace(cfg.data, path=None, synthetic=dict(SYNTHETIC[fmt])))
    result = bench_train(cfg, args.steps, args.warmup)
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _clear_run(out: Path) -> None:
    import shutil

    for f in (list(out.glob("*.pt")) + list(out.glob(".*.pt.*.tmp")) + list(out.glob("predictions_*.jsonl"))
              + [out / "metrics.jsonl", out / "summary.json", out / "curves.png"]):
        f.unlink(missing_ok=True)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)


def cmd_train(args) -> int:
    from fastdecoder.config import apply_overrides, config_from_dict, load_config
    from fastdecoder.train import distributed
    from fastdecoder.train.checkpoint import check_resumable, load_checkpoint
    from fastdecoder.train.trainer import Trainer

    info = distributed.env_info()
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={json.dumps(args.data)}")
    out = Path(args.out) if args.out else None
    state = None
    if args.resume:
        if args.overwrite:
            raise ValueError("--resume and --overwrite conflict: --resume continues the run in --out, --overwrite "
                             "deletes it")
        if out is None:
            raise ValueError("--resume needs --out DIR, the run folder holding last.pt")
        state = load_checkpoint(out / "last.pt")  # names the file if missing, corrupt or foreign; touches nothing
        check_resumable(state, out / "last.pt")
        cfg = (load_config(args.config, overrides) if args.config
               else config_from_dict(apply_overrides(state["config"], overrides)))
    else:
        if not args.config:
            raise ValueError("--config is required (a preset name or YAML file), unless --resume continues a run")
        cfg = load_config(args.config, overrides)
        if out is not None and out.exists() and (any(out.glob("*.pt")) or (out / "metrics.jsonl").exists()):
            if not args.overwrite:
                raise SystemExit(f"error: {out} already holds a run (checkpoints or metrics found); pass --overwrite "
                                 f"to replace it, --resume to continue it, or choose another --out")
            if info.is_main:
                _clear_run(out)
    trainer = Trainer(cfg, out, progress=not args.no_progress, resume=state if state is not None else False)
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
        return 0
    print(json.dumps(summary, indent=2))
    if summary.get("val_per") is not None:
        beam = summary.get("val_per_beam")
        extra = f", beam search (width {summary['beam_width']}) {beam:.4f}" if beam is not None else ""
        print(f"validation PER: greedy {summary['val_per']:.4f}{extra}")
    if summary.get("interrupted"):
        where = f" --out {out}" if out is not None else ""
        print(f"interrupted at step {summary['steps']} ({summary['interrupted']}); continue with: "
              f"fastdecoder train{where} --resume", flush=True)
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


def cmd_eval(args) -> int:
    import numpy as np

    from fastdecoder.decode.ensemble import evaluate_runs
    from fastdecoder.phonemes import ids_to_text
    from fastdecoder.train.trainer import beam_per

    if (args.rescore_lm or args.tune_weights) and not args.lm:
        raise ValueError("--rescore-lm and --tune-weights rescore word n-best lists: they need --lm")
    if args.rescore_lm:
        from fastdecoder.decode.rescore import require_transformers

        require_transformers()
    runs = evaluate_runs(args.run, args.split, checkpoint=args.checkpoint, data=args.data, device=args.device)
    res, ds, split, data_path = runs.result, runs.dataset, runs.split, args.data or runs.configs[0].data.path
    run = Path(args.run[0])
    out = {"run": str(run) if len(args.run) == 1 else args.run, "checkpoint": args.checkpoint,
           "step": runs.steps[0] if len(args.run) == 1 else runs.steps, "split": args.split, "trials": res.n_trials}
    if len(args.run) > 1:
        out["members"] = [{"run": n, "step": st, "per_greedy": m.per} for n, st, m in
                          zip(runs.names, runs.steps, runs.members)]
        if args.decoder == "beam" and split.targets is not None:
            for rec, m in zip(out["members"], runs.members):
                rec["per_beam"] = beam_per(m, split, args.beam_width)[0]
    beam_hyps = None
    if split.targets is not None:
        out["per_greedy"] = res.per
    if args.decoder == "beam":
        from fastdecoder.decode import beam_search

        T = max(lp.shape[0] for lp in res.log_probs)
        arr = np.zeros((len(res.log_probs), T, res.log_probs[0].shape[1]), dtype=np.float32)
        lens = np.array([lp.shape[0] for lp in res.log_probs])
        for i, lp in enumerate(res.log_probs):
            arr[i, : lp.shape[0]] = lp
        beam_hyps = [h[0][0] for h in beam_search(arr, lens, beam_width=args.beam_width)]
        if split.targets is not None:
            out["per_beam"], out["beam_width"] = beam_per(res, split, args.beam_width)
    word_hyps = None
    if args.lm:
        from fastdecoder.decode import evaluate_words, lexicon_from_split, load_lexicon

        if split.transcriptions is None:
            raise ValueError(f"split '{args.split}' of {data_path} has no transcriptions: WER needs them")
        if args.lexicon == "train":
            tr = ds.splits.get("train")
            if tr is None or tr.targets is None or tr.transcriptions is None:
                raise ValueError(f"--lexicon train needs a labelled training split in {data_path}")
            lexicon = lexicon_from_split(tr.transcriptions, tr.targets)
        else:
            lexicon = load_lexicon(None if args.lexicon in (None, "cmudict") else args.lexicon)
        refs = [split.transcriptions[i] for i in res.indices]
        if args.rescore_lm or args.tune_weights:
            from fastdecoder.decode.rescore import rescore_split

            report, word_hyps = rescore_split(
                res.log_probs, refs, lexicon=lexicon, lm=args.lm, lm_weight=args.lm_weight,
                beam_width=args.word_beam_width, nbest=args.nbest or args.word_beam_width,
                rescore_lm=args.rescore_lm, rescore_weight=args.rescore_weight,
                ngram_weight=args.lm_weight if args.rescore_ngram_weight is None else args.rescore_ngram_weight,
                word_bonus=args.rescore_word_bonus, tune=args.tune_weights, batch_size=args.rescore_batch_size,
                device=args.rescore_device)
            out.update(report)
        else:
            wres = evaluate_words(res.log_probs, refs, lexicon=lexicon, lm=args.lm, lm_weight=args.lm_weight,
                                  beam_width=args.word_beam_width)
            out.update(wer=wres.wer, word_edits=wres.edits, reference_words=wres.words, lm=args.lm)
            word_hyps = wres.hypotheses
    ensemble = f"_ensemble{len(args.run)}" if len(args.run) > 1 else ""
    pred_path = run / f"predictions_{args.split}_{args.checkpoint}{ensemble}.jsonl"
    with open(pred_path, "w") as f:
        for k, i in enumerate(res.indices):
            rec = {"trial": split.trial_ids[i], "greedy": ids_to_text(res.greedy[k])}
            if beam_hyps is not None:
                rec["beam"] = ids_to_text(beam_hyps[k])
            if word_hyps is not None:
                rec["words"] = word_hyps[k]
                rec["transcription"] = split.transcriptions[i]
            if split.targets is not None:
                rec["target"] = ids_to_text(split.targets[i])
            f.write(json.dumps(rec) + "\n")
    out["predictions"] = str(pred_path)
    print(json.dumps(out, indent=2))
    return 0


def cmd_lm(args) -> int:
    from fastdecoder.decode import build_lm

    if args.order < 1:
        raise ValueError(f"--order must be >= 1, got {args.order}")
    if not Path(args.text).is_file():
        raise FileNotFoundError(f"corpus {args.text} does not exist")
    lm = build_lm(args.text, args.order, args.out)
    counts = ", ".join(f"{n}-grams: {c}" for n, c in enumerate(lm.counts, 1))
    print(f"wrote {args.out}: order {args.order}, {counts}")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastdecoder", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_plot(sub)
    _add_data(sub)
    _add_bench(sub)
    _add_lm(sub)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0") or 0)
    level = logging.DEBUG if args.verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(level=level, format=f"%(levelname)s {'' if rank == 0 else f'[rank {rank}] '}%(message)s")
    from fastdecoder.config import ConfigError
    from fastdecoder.train.stability import NonFiniteError

    try:
        return {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot, "data": cmd_data,
                "bench": cmd_bench, "lm": cmd_lm}[args.cmd](args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
