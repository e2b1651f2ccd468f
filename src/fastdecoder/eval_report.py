"""``fastdecoder eval`` as a library call: score a run's checkpoint, or the ensemble of several runs, on a split
through the trainer's own evaluation path (same transform, same autocast): greedy, beam or words, with optional
neural-LM rescoring; on an unlabelled split (test) it decodes without scoring and can write a competition submission.
`eval_report` writes the predictions (and the files asked for) and returns the report the command prints.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from fastdecoder.errors import UserError, writing

__all__ = ["EvalRequest", "eval_report"]


@dataclass
class EvalRequest:
    """What to evaluate and write; the fields are ``fastdecoder eval``'s options of the same names."""

    runs: Sequence[str]                     # run folders; several: their ensemble (mean of per-frame posteriors)
    checkpoint: str = "best"                # best | last | a file name in the run folder
    split: str = "val"
    data: Optional[str] = None              # data path (default: the one the run was trained on)
    device: str = "cpu"
    decoder: str = "greedy"                 # greedy | beam (phonemes)
    beam_width: int = 20
    # word decoding (the word decoder itself comes from `eval_report`'s ``word_decoder``)
    lm: Optional[str] = None                # ARPA file: also decode words and report WER
    lm_weight: float = 0.5
    word_beam_width: int = 64
    word_bonus: float = 0.0
    nbest: Optional[int] = None             # sentences per trial for rescoring / save_nbest (None: word_beam_width)
    rescore_lm: Optional[str] = None        # causal LM rescoring the n-best lists
    rescore_weight: float = 0.5             # b: the neural LM's weight
    rescore_ngram_weight: Optional[float] = None  # a (None: lm_weight)
    rescore_word_bonus: Optional[float] = None    # c (None: word_bonus)
    rescore_batch_size: int = 32
    rescore_device: Optional[str] = None
    tune_weights: bool = False              # grid-search (a, b, c) on this (labelled) split; saved to save_weights
    save_weights: Optional[str] = None      # default: RUN/rescore_weights.json
    rescore_weights: Optional[str] = None   # pick sentences by the weights in this file
    submission: Optional[str] = None        # competition submission file to write
    format: Optional[str] = None            # b2t25 | b2t24 (default: the data's)
    save_logits: Optional[str] = None       # .npz of the per-trial log-probabilities
    save_nbest: Optional[str] = None        # .jsonl of the n-best sentences and phoneme strings


def eval_report(req: EvalRequest, word_decoder: Optional[Callable] = None) -> dict:
    """Evaluate ``req.runs`` on ``req.split``, write ``RUN/predictions_<split>_<checkpoint>[_ensembleN]_<tag>.jsonl``
    (and the files ``req`` names) and return the report. With ``req.lm``, ``word_decoder(dataset, data_path, nbest)``
    builds the word decoder (the dataset the runs were evaluated on, for a lexicon read off its training split)."""
    from fastdecoder.decode import error_rate
    from fastdecoder.eval_outputs import save_logits, save_nbest
    from fastdecoder.evaluation import beam_hypotheses, day_names_of, evaluate_runs, per_by_day
    from fastdecoder.phonemes import ids_to_text
    from fastdecoder.checkpoint import run_checkpoint_path
    from fastdecoder.device import resolve_device

    if req.lm and word_decoder is None:
        raise TypeError("eval_report: req.lm needs word_decoder")
    rescoring = bool(req.rescore_lm or req.tune_weights or req.rescore_weights)
    for r in req.runs:
        run_checkpoint_path(r, req.checkpoint)  # a path outside the run folder is refused before any work
    if req.rescore_lm:
        from fastdecoder.decode.rescore import check_causal_lm

        check_causal_lm(req.rescore_lm)
    weights = None
    if req.rescore_weights:
        from fastdecoder.decode.rescore import load_weights

        weights = load_weights(req.rescore_weights)
    device = resolve_device(req.device, "--device")
    runs = evaluate_runs(req.runs, req.split, checkpoint=req.checkpoint, data=req.data, device=device)
    res, ds, split = runs.result, runs.dataset, runs.split
    data_path = req.data or runs.configs[0].data.path
    single = len(req.runs) == 1
    run = Path(req.runs[0])
    out = {"run": str(run) if single else list(req.runs), "checkpoint": req.checkpoint,
           "step": runs.steps[0] if single else runs.steps, "split": req.split, "trials": res.n_trials}
    if split.targets is None:
        out["labelled"] = False       # no PER / WER: the split has no labels (a competition's test split)
    refs = [split.targets[i].tolist() for i in res.indices] if split.targets is not None else None
    if not single:
        out["members"] = [{"run": n, "step": st, "per_greedy": m.per}
                          for n, st, m in zip(runs.names, runs.steps, runs.members)]
        if req.decoder == "beam" and refs is not None:
            for rec, m in zip(out["members"], runs.members):
                rec["per_beam"] = error_rate(beam_hypotheses(m.log_probs, req.beam_width), refs)[0]
    if refs is not None:
        out["per_greedy"] = res.per
        out["per_day"] = day_names_of(res.per_day, ds.day_names)
    beam = None
    if req.decoder == "beam":
        beam = beam_hypotheses(res.log_probs, req.beam_width)
        if refs is not None:
            out["per_beam"], out["beam_width"] = error_rate(beam, refs)[0], req.beam_width
            for d, v in per_by_day(beam, refs, split.day[res.indices]).items():
                out["per_day"][ds.day_names[d]].update(per_beam=v["per"], edits_beam=v["edits"])
    if req.save_logits:
        out["logits"] = str(save_logits(req.save_logits, res.log_probs, res.indices, split, ds.day_names,
                                        req.split))
    word_hyps, tag = None, req.decoder
    if req.lm:
        from fastdecoder.decode.rescore import RescoreWeights, decode_split_words, save_weights

        if weights is None and (req.rescore_lm or req.rescore_ngram_weight is not None
                                or req.rescore_word_bonus is not None):
            weights = RescoreWeights(req.lm_weight if req.rescore_ngram_weight is None else req.rescore_ngram_weight,
                                     req.rescore_weight if req.rescore_lm else 0.0,
                                     req.word_bonus if req.rescore_word_bonus is None else req.rescore_word_bonus)
        rescoring = rescoring or weights is not None
        nbest = (req.nbest or req.word_beam_width) if (rescoring or req.save_nbest) else 1
        words = word_decoder(ds, data_path, nbest)
        transcripts = ([split.transcriptions[i] for i in res.indices] if split.transcriptions is not None
                       else None)
        decoded = decode_split_words(words, res.log_probs, transcripts, weights=weights, rescore_lm=req.rescore_lm,
                                     tune=req.tune_weights, batch_size=req.rescore_batch_size,
                                     device=req.rescore_device)
        out.update(lm=req.lm, **decoded.report)
        if req.rescore_weights:
            out["rescore_weights_file"] = req.rescore_weights
        if req.tune_weights:
            ens = "" if single else f"_ensemble{len(req.runs)}"
            wpath = Path(req.save_weights) if req.save_weights else run / f"rescore_weights{ens}.json"
            out["weights_file"] = str(save_weights(wpath, decoded.weights, tuned_on=req.split, wer=out["wer_tuned"],
                                                   lm=req.lm, lm_weight=req.lm_weight, rescore_lm=req.rescore_lm))
        word_hyps = decoded.hypotheses
        tag += "_rescored" if rescoring else "_words"
        if req.save_nbest:
            out["nbest_file"] = str(save_nbest(req.save_nbest, decoded, res.log_probs, req.beam_width, res.indices,
                                               split, ds.day_names))
        if req.submission:
            from fastdecoder.decode.submission import write_submission

            if not np.array_equal(res.indices, np.arange(len(split))):
                raise RuntimeError("the evaluation did not keep the split's trial order")
            _check_submission_sessions(runs.configs[0].data.sessions, data_path, req.split)
            fmt = req.format or ds.format
            out["submission"] = str(write_submission(req.submission, word_hyps, fmt))
            out["submission_format"] = fmt
    ensemble = "" if single else f"_ensemble{len(req.runs)}"
    pred_path = run / f"predictions_{req.split}_{req.checkpoint}{ensemble}_{tag}.jsonl"
    with writing(pred_path), open(pred_path, "w") as f:
        for k, i in enumerate(res.indices):
            rec = {"trial": split.trial_ids[i], "greedy": ids_to_text(res.greedy[k])}
            if beam is not None:
                rec["beam"] = ids_to_text(beam[k])
            if word_hyps is not None:
                rec["words"] = word_hyps[k]
                if split.transcriptions is not None:
                    rec["transcription"] = split.transcriptions[i]
            if split.targets is not None:
                rec["target"] = ids_to_text(split.targets[i])
            f.write(json.dumps(rec) + "\n")
    out["predictions"] = str(pred_path)
    return out


def _check_submission_sessions(sessions, data_path, split_name: str) -> None:
    """A submission covers every session's trials of the split: a run trained on a subset (``data.sessions``)
    would leave sessions out, so it is refused, naming them."""
    if sessions is None:
        return
    from fastdecoder.data import load_dataset

    full = load_dataset(data_path, "auto")
    split = full.splits.get(split_name)
    having = sorted({full.day_names[d] for d in split.day}) if split is not None and len(split) else []
    left_out = [name for name in having if name not in set(sessions)]
    if left_out:
        raise UserError(f"--submission: the run selects data.sessions, which leaves out {len(left_out)} session(s) "
                        f"with {split_name} trials ({', '.join(left_out[:5])}{' ...' if len(left_out) > 5 else ''}); "
                        "a submission must cover every session: evaluate a run whose data.sessions includes them")
