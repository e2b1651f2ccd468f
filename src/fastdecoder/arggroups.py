"""Option groups that several commands share, each declared once: the config source (``--data``, ``--set``) and word
decoding (``--lm``, ``--lexicon``, ``--lm-weight``, ``--word-beam-width``, ``--blank-penalty``, ``--word-bonus``),
with what their handlers do with them. Building the parsers imports no torch.
"""
from __future__ import annotations

import json
from pathlib import Path

from fastdecoder._native import MAX_BEAM_WIDTH
from fastdecoder.argtypes import finite_float, float_at_least, int_in
from fastdecoder.errors import UserError

DATA_HELP = "dataset: b2t24 pickle file or b2t25 folder of session folders (overrides data.path)"


def add_config_source(p, *, data: bool = True) -> None:
    """``--data PATH`` (unless ``data`` is false) and ``--set SECTION.KEY=VALUE`` (repeatable): `overrides_of`."""
    if data:
        p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable)")


def overrides_of(args) -> list[str]:
    """The ``--set`` overrides, with ``--data`` (when given) as the last one: ``data.path``."""
    overrides = list(args.overrides)
    if getattr(args, "data", None):
        overrides.append(f"data.path={json.dumps(args.data)}")
    return overrides


def add_word_decoding(p, *, lm_help: str = "ARPA n-gram LM (plain or .gz): also decode words and report WER") -> None:
    """The word decoder's options (`word_decoder`); each except ``--lm`` needs ``--lm`` (`check_word_options`)."""
    p.add_argument("--lm", help=lm_help)
    p.add_argument("--lexicon", default=None,
                   help="with --lm: 'cmudict' (default), 'train' (read off the training split's transcripts and "
                        "phonemes), or a file of 'WORD PH PH ...' lines")
    p.add_argument("--lm-weight", type=float_at_least(0.0), default=0.5)
    p.add_argument("--word-beam-width", type=int_in(1, MAX_BEAM_WIDTH), default=64)
    p.add_argument("--blank-penalty", type=finite_float, default=0.0,
                   help="with --lm: subtracted from the blank's log-probability in every frame (> 0: fewer blanks)")
    p.add_argument("--word-bonus", type=finite_float, default=0.0,
                   help="with --lm: added to a hypothesis' score per word (natural log; > 0: more words)")


def check_word_options(args) -> None:
    """Word-decoding options need --lm (they would otherwise be ignored)."""
    if args.lm:
        return
    given = [name for name, on in (("--lexicon", args.lexicon is not None),
                                   ("--blank-penalty", args.blank_penalty != 0.0),
                                   ("--word-bonus", args.word_bonus != 0.0),
                                   ("--submission", getattr(args, "submission", None) is not None),
                                   ("--save-nbest", getattr(args, "save_nbest", None) is not None),
                                   ("--rescore-weights", getattr(args, "rescore_weights", None) is not None),
                                   ("--rescore-lm", getattr(args, "rescore_lm", None) is not None),
                                   ("--tune-weights", getattr(args, "tune_weights", False))) if on]
    if given:
        why = (" (the competitions score words: a submission holds the word decoder's sentences)"
               if "--submission" in given else "")
        raise UserError(f"{given[0]} is a word decoding option, and word decoding options need --lm ARPA{why}")


def check_word_files(args) -> None:
    """--lm and a --lexicon file exist: checked before anything is evaluated (their contents when they are read)."""
    for option, path in (("--lm", args.lm), ("--lexicon", args.lexicon)):
        if path and not (option == "--lexicon" and path in ("cmudict", "train")) and not Path(path).is_file():
            raise UserError(f"{option} {path}: no such file")


def _word_lexicon(name, ds, data_path):
    """--lexicon: 'cmudict' / None, 'train' (read off the labelled training split), or a lexicon file."""
    from fastdecoder.decode import lexicon_from_split, load_lexicon

    if name == "train":
        tr = ds.splits.get("train")
        if tr is None or tr.targets is None or tr.transcriptions is None:
            raise UserError(f"--lexicon train needs a labelled training split in {data_path}")
        return lexicon_from_split(tr.transcriptions, tr.targets)
    return load_lexicon(None if name in (None, "cmudict") else name)


def word_decoder(args, ds, data_path, nbest: int = 1):
    """The WordDecoder the word-decoding options describe (``ds``, read from ``data_path``: the dataset whose training
    split ``--lexicon train`` reads); ``nbest`` sentences per trial."""
    from fastdecoder.decode import WordDecoder

    try:
        return WordDecoder(lexicon=_word_lexicon(args.lexicon, ds, data_path), lm=args.lm, lm_weight=args.lm_weight,
                           beam_width=args.word_beam_width, nbest=nbest, blank_penalty=args.blank_penalty,
                           word_bonus=args.word_bonus)
    except UserError:
        raise
    except ValueError as e:   # a lexicon or LM file, or a word decoder setting: the message names it
        raise UserError(f"word decoder (--lm / --lexicon / --lm-weight / --word-beam-width / --nbest / "
                        f"--blank-penalty / --word-bonus): {e}") from None
