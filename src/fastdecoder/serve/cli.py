"""The ``serve`` and ``replay`` commands (argument parsers and handlers; registered by fastdecoder.cli)."""
from __future__ import annotations

import json
from pathlib import Path

from fastdecoder.arggroups import add_word_decoding, check_word_files, check_word_options, word_decoder
from fastdecoder.errors import UserError

__all__ = ["add_serve", "add_replay"]

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def _add_names(p) -> None:
    from fastdecoder.serve.server import StreamNames

    d = StreamNames()
    p.add_argument("--logits-stream", default=d.logits,
                   help="per output frame: logits (41 float32 log-probabilities), frame, trial, input_id, sync, ts")
    p.add_argument("--output-stream", default=d.output,
                   help="start, per-hop partial_decoded_sentence (+ phonemes, phonemes_final, words_final), end, "
                        "final_decoded_sentence (+ phoneme_ids, words, nbest)")
    p.add_argument("--error-stream", default=d.errors, help="malformed entries and aborted trials")
    p.add_argument("--status-stream", default=d.status, help="ready, periodic status (lag), stopped")


def _names(args, input_name: str | None = None):
    from fastdecoder.serve.server import StreamNames

    return StreamNames(input=input_name or "binned_input_stream", logits=args.logits_stream,
                       output=args.output_stream, errors=args.error_stream, status=args.status_stream,
                       **({"progress": args.progress_key, "task_state": args.task_state_stream,
                           "task_state_key": args.task_state_key} if hasattr(args, "progress_key") else {}))


def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="decode binned features from Redis streams in real time (closed-loop rig)",
                       description="Read 20 ms bins from Redis streams (one decoding session per --input stream), "
                                   "decode them with the streaming decoder and write per-frame log-probabilities, "
                                   "partial and final results back. Stops cleanly on SIGTERM / Ctrl-C.")
    p.set_defaults(handler=cmd_serve)
    p.add_argument("--run", required=True, help="run folder written by 'fastdecoder train --out'")
    p.add_argument("--checkpoint", default="best", help="best | last | a file name in the run folder")
    p.add_argument("--redis", default=DEFAULT_URL, help=f"Redis URL (default {DEFAULT_URL})")
    p.add_argument("--input", action="append", default=None, metavar="STREAM",
                   help="input stream of bins (field 'samples': n x features float32 bytes); repeat for several "
                        "sessions (default: binned_input_stream)")
    _add_names(p)
    p.add_argument("--progress-key", default="brainToText_progress",
                   help="hash holding each session's last processed entry id (resume after a restart)")
    p.add_argument("--trials", default="inband", choices=["inband", "task_state", "legacy"],
                   help="where trial start/end come from: 'inband' entries on the input stream ({start: TRIAL_ID, "
                        "day: D} / {end: ''}); 'task_state' the NEJM task-state stream (field state: go starts, "
                        "end_trial/freeze end); 'legacy' the NEJM integer key (1 go, 3 end, 4 paused)")
    p.add_argument("--task-state-stream", default="task_state")
    p.add_argument("--task-state-key", default="task_state_current")
    p.add_argument("--day", type=int, default=None,
                   help="day index of trials whose start names none (default: the model's last day)")
    p.add_argument("--beam-width", type=int, default=20)
    p.add_argument("--nbest", type=int, default=1, help="phoneme hypotheses in the final entry's nbest")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: one core per decoder)")
    add_word_decoding(p, lm_help="ARPA n-gram LM (plain or .gz): also decode words")
    p.add_argument("--data", help="with --lexicon train: data path (default: the run's)")
    p.add_argument("--normalize", action="store_true",
                   help="rolling z-score as the NEJM node: statistics of the last --norm-window trials (at least "
                        "--norm-min-trials, blended with the starting ones before), |z| > --norm-clip set to 0")
    p.add_argument("--norm-stats", default=None,
                   help="with --normalize: starting statistics, an .npz with 'mean' and 'std' (default 0 and 1)")
    p.add_argument("--norm-window", type=int, default=20)
    p.add_argument("--norm-min-trials", type=int, default=10)
    p.add_argument("--norm-clip", type=float, default=10.0)
    p.add_argument("--on-malformed", default="skip", choices=["skip", "abort"],
                   help="a malformed bin entry (length, dtype, NaN): skip it (default) or abort the trial")
    p.add_argument("--max-trial-bins", type=int, default=30_000, help="abort a trial longer than this")
    p.add_argument("--maxlen", type=int, default=0, help="approximate cap on output stream lengths (0: none)")
    p.add_argument("--status-interval", type=float, default=1.0, help="seconds between status entries")
    p.add_argument("--lag-warn-ms", type=float, default=200.0, help="report a session 'behind' past this lag")
    p.add_argument("--start-at", default="new", choices=["new", "first"],
                   help="without saved progress: read only new entries (default) or the stream from its start")
    p.add_argument("--fresh", action="store_true", help="ignore saved progress (do not resume)")
    p.add_argument("--lsl", action="store_true",
                   help="Lab Streaming Layer instead of Redis (pip install 'fastdecoder[lsl]'): --input names an LSL "
                        "stream of float32 bins, <input>_markers its 'start TRIAL DAY' / 'end' markers; "
                        "--logits-stream and --output-stream name the outlets (JSON records on the output one)")


def add_replay(sub) -> None:
    q = sub.add_parser("replay", help="publish a split to a running 'fastdecoder serve' over Redis and score it",
                       description="Publish a split's trials at 20 ms per bin (--fast: at once) to a running "
                                   "'fastdecoder serve', collect its outputs, print PER (and WER) and latency.")
    q.set_defaults(handler=cmd_replay)
    q.add_argument("--redis", default=DEFAULT_URL)
    q.add_argument("--run", required=True, help="run folder (its config names the data)")
    q.add_argument("--checkpoint", default="best")
    q.add_argument("--split", default="val", help="val | test | train")
    q.add_argument("--data", help="data path (default: the one the run was trained on)")
    q.add_argument("--fast", action="store_true", help="publish as fast as possible (no 20 ms pacing)")
    q.add_argument("--max-trials", type=int, default=None)
    q.add_argument("--input", default="binned_input_stream", help="the server's input stream")
    _add_names(q)
    q.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the server to be ready, and for the last results")
    q.add_argument("--lsl", action="store_true",
                   help="publish over LSL to 'fastdecoder serve --lsl' (--redis unused)")


def _decoder(args, model, cfg, device):
    from fastdecoder.stream import StreamingDecoder

    words = None
    if args.lm:
        ds = None
        if args.lexicon == "train":  # as eval / stream: read off the labelled training split
            from fastdecoder.data import load_dataset

            ds = load_dataset(args.data or cfg.data.path, "auto")
        words = word_decoder(args, ds, args.data or cfg.data.path)
    return lambda: StreamingDecoder(model, beam_width=args.beam_width, nbest=args.nbest, word_decoder=words,
                                    device=device)


def cmd_serve(args) -> int:
    import torch

    from fastdecoder.serve.normalize import RollingZScore
    from fastdecoder.serve.redis_io import require_redis
    from fastdecoder.serve.server import Server, ServeOptions
    from fastdecoder.serve.session import DecodeSession
    from fastdecoder.checkpoint import load_run
    from fastdecoder.device import resolve_device

    check_word_options(args)
    check_word_files(args)
    if not args.lsl:
        require_redis()
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    for name in ("max_trial_bins", "norm_window", "norm_min_trials"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if args.maxlen < 0 or not args.status_interval > 0:
        raise UserError("--maxlen must be >= 0 and --status-interval > 0")
    torch.set_num_threads(args.threads)
    if not Path(args.run).is_dir():
        raise UserError(f"run folder {args.run} does not exist")
    device = resolve_device(args.device, "--device")
    cfg, model, _ = load_run(Path(args.run), args.checkpoint, device)
    n_days = model.cfg.n_days
    day = n_days - 1 if args.day is None else args.day
    if not 0 <= day < n_days:
        raise UserError(f"--day {day}: the model has day layers for days 0..{n_days - 1}")
    make = _decoder(args, model, cfg, device)
    inputs = args.input or ["binned_input_stream"]
    base = _names(args)
    sessions = []
    for name in inputs:
        norm = None
        if args.normalize:
            kw = dict(window=args.norm_window, min_trials=args.norm_min_trials, clip=args.norm_clip)
            C = model.cfg.n_features
            norm = (RollingZScore.from_file(args.norm_stats, C, **kw) if args.norm_stats
                    else RollingZScore([0.0] * C, [1.0] * C, **kw))
        elif args.norm_stats:
            raise UserError("--norm-stats needs --normalize")
        session = DecodeSession(make(), name, normalizer=norm, on_malformed=args.on_malformed,
                                max_trial_bins=args.max_trial_bins, nbest=args.nbest)
        sessions.append((base.for_input(name, len(inputs) > 1), session))
    opts = ServeOptions(trials=args.trials, default_day=day, maxlen=args.maxlen, status_interval=args.status_interval,
                        lag_warn_ms=args.lag_warn_ms, start_at=args.start_at, fresh=args.fresh)
    if args.lsl:
        return _serve_lsl(sessions, args.status_interval, day)
    print(f"serve: {len(sessions)} session(s) on {args.redis}: "
          + ", ".join(f"{n.input} -> {n.logits}, {n.output}" for n, _ in sessions), flush=True)
    return Server(args.redis, sessions, opts).run()


def _serve_lsl(sessions, status_interval: float, day: int) -> int:
    import signal
    import threading

    from fastdecoder.serve.lsl import LslSession, require_pylsl

    require_pylsl()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threads = [LslSession(s, n.input, n.logits, n.output, stop, status_interval, day) for n, s in sessions]
    print("serve --lsl: " + ", ".join(f"{n.input} -> {n.logits}, {n.output}" for n, _ in sessions), flush=True)
    for t in threads:
        t.start()
    while not stop.wait(0.2):
        pass
    for t in threads:
        t.join(10)
    failed = [t.failure for t in threads if t.failure is not None]
    if failed:
        raise failed[0]
    return 0


def cmd_replay(args) -> int:
    from fastdecoder.data import load_dataset
    from fastdecoder.serve.redis_io import require_redis
    from fastdecoder.serve.replay import replay_redis
    from fastdecoder.checkpoint import load_run

    if not args.lsl:
        require_redis()
    if not Path(args.run).is_dir():
        raise UserError(f"run folder {args.run} does not exist")
    if args.max_trials is not None and args.max_trials < 1:
        raise UserError(f"--max-trials must be >= 1, got {args.max_trials}")
    cfg, _, _ = load_run(Path(args.run), args.checkpoint)
    data_path = args.data or cfg.data.path
    ds = load_dataset(data_path, "auto")
    if args.split not in ds.splits:
        raise UserError(f"{data_path} has no '{args.split}' split (has: {', '.join(ds.splits)})")
    names = _names(args, args.input)
    if args.lsl:
        from fastdecoder.serve.lsl import replay_lsl

        out = replay_lsl(ds.splits[args.split], input_name=names.input, logits_name=names.logits,
                         output_name=names.output, fast=args.fast, max_trials=args.max_trials, timeout=args.timeout)
        print(json.dumps({"run": str(args.run), "split": args.split, "lsl": True, **out}, indent=2))
        return 0
    out = replay_redis(args.redis, ds.splits[args.split], names=names, fast=args.fast, max_trials=args.max_trials,
                       timeout=args.timeout, ready_timeout=args.timeout)
    print(json.dumps({"run": str(args.run), "split": args.split, "redis": args.redis, **out}, indent=2))
    return 0
