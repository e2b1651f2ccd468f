"""N-best rescoring of word-decoder output with a neural (causal) language model, and a weight search.

Each hypothesis of a sentence's n-best list (:meth:`WordDecoder.decode` with ``nbest > 1``) is scored

    total = acoustic + a * ngram + b * neural + c * words

with ``acoustic`` the CTC log-mass the word decoder kept, ``ngram`` the natural-log n-gram LM probability (``</s>``
included), ``neural`` the natural-log probability of the sentence under a causal LM (:class:`NeuralLM`) and ``words``
the word count; the best total wins. With ``a`` = the decoder's ``lm_weight``, ``b = 0`` and ``c`` = its
``word_bonus`` the ranking is the decoder's own.

:class:`NBestList` caches a split's n-best lists with their scores, so that :func:`tune_weights` searches (a, b, c)
on a grid without decoding again. :func:`decode_split_words` runs the whole chain on a split (labelled or not);
:func:`save_weights` / :func:`load_weights` carry tuned weights from one split (val) to another (test).

Any causal LM that Hugging Face ``transformers`` loads (GPT-2, OPT, Llama family; a local folder or a hub name the
user has) works: the optional extra ``pip install 'fastdecoder[llm]'``.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from fastdecoder.decode.lm import normalize_text
from fastdecoder.decode.metrics import edit_distances
from fastdecoder.errors import UserError

__all__ = ["NeuralLM", "NBestList", "RescoreWeights", "TuneResult", "decode_nbest", "tune_weights", "DEFAULT_GRID",
           "wer_of", "rescore_split", "require_transformers", "SplitWords", "decode_split_words",
           "save_weights", "load_weights", "check_causal_lm"]

log = logging.getLogger(__name__)

_MISSING = "neural-LM rescoring needs the 'transformers' package: pip install 'fastdecoder[llm]'"


def _transformers():
    try:
        import transformers  # noqa: PLC0415
    except ImportError:
        raise UserError(_MISSING) from None
    return transformers


def _torch_dtype(dtype, device):
    import torch

    if dtype is None or dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise UserError(f"dtype must be 'auto', one of {sorted(names)} or a torch dtype, got {dtype!r}")
    return names[dtype]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_causal_lm(name_or_path, *, local_files_only: bool = False) -> None:
    """UserError unless ``name_or_path`` is a model folder (or hub name) whose config is a causal LM's (reads the
    config only: no tokenizer, no weights). Also raises when ``transformers`` is missing."""
    tf = _transformers()
    name = str(name_or_path)
    path = Path(name)
    looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1
    what = f"cannot load a causal LM from {name!r}"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{what}: the folder has no config.json, so it is not a model folder (a Hugging Face "
                            "model folder holds config.json, the weights and the tokenizer files)")
    elif path.exists():
        raise UserError(f"{what}: it is a file, not a model folder")
    elif looks_local:
        raise UserError(f"{what}: no such folder")
    try:
        config = tf.AutoConfig.from_pretrained(name, local_files_only=local_files_only)
    except (OSError, ValueError, ImportError) as e:
        raise UserError(f"{what}: {_first_line(e)}") from None
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # another layout: AutoModelForCausalLM's own error (first line) says it
        return
    kind = getattr(config, "model_type", None)
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UserError(f"{what}: it holds a {kind or type(config).__name__} model, which is not a causal LM; "
                        "rescoring needs a causal (decoder-only) LM such as GPT-2, OPT or Llama")


class NeuralLM:
    """A causal LM that scores whole sentences: natural-log ``p(w_1 .. w_n)`` as the sum of next-token log-probs.

    The first token is conditioned on the tokenizer's BOS token (its EOS token where it has no BOS, as GPT-2 and
    OPT's ``</s>``); with neither, the first token is context only and not scored. Sentences are tokenized without
    the tokenizer's own special tokens, batched by similar length, right-padded, and the padding masked.

    Args:
        name_or_path: a local folder or hub name for ``AutoModelForCausalLM`` / ``AutoTokenizer``.
        device: "cuda" when available, else "cpu" (default), or any torch device.
        dtype: "auto" (bf16 on a GPU that supports it, else fp16 on a GPU, fp32 on the CPU), "float32",
            "bfloat16", "float16" or a torch dtype.
        batch_size: sentences per forward pass.
        score_eos: also score the EOS token after the sentence (``p(</s> | sentence)``).
        model, tokenizer: an already loaded model and tokenizer instead of ``name_or_path``.
    """

    def __init__(self, name_or_path=None, *, device=None, dtype="auto", batch_size: int = 32,
                 score_eos: bool = False, local_files_only: bool = False, model=None, tokenizer=None):
        import torch

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = _torch_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.score_eos = bool(score_eos)
        if model is None or tokenizer is None:
            if name_or_path is None:
                raise UserError("NeuralLM needs name_or_path, or both model= and tokenizer=")
            check_causal_lm(name_or_path, local_files_only=local_files_only)
            tf = _transformers()
            new_api = tuple(int(p) for p in tf.__version__.split(".")[:2] if p.isdigit()) >= (4, 56)
            kw = {"dtype" if new_api else "torch_dtype": self.dtype, "local_files_only": local_files_only}
            try:
                tokenizer = tokenizer or tf.AutoTokenizer.from_pretrained(str(name_or_path),
                                                                          local_files_only=local_files_only)
                model = model or tf.AutoModelForCausalLM.from_pretrained(str(name_or_path), **kw)
            except (OSError, ValueError, ImportError) as e:
                raise UserError(f"cannot load a causal LM from {name_or_path!r}: {_first_line(e)}") from None
        self.source = str(name_or_path) if name_or_path is not None else type(model).__name__
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        self.context_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if self.context_id is None:
            log.warning("%s: the tokenizer has no BOS or EOS token: each sentence's first token is not scored",
                        self.source)
        if self.score_eos and tokenizer.eos_token_id is None:
            raise UserError(f"score_eos=True but the tokenizer of {self.source} has no EOS token")
        cfg = getattr(model, "config", None)
        self.max_positions = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        self.pad_id = next((i for i in (tokenizer.pad_token_id, self.context_id, tokenizer.eos_token_id)
                            if i is not None), 0)

    def token_ids(self, sentences: Sequence[str]) -> list[list[int]]:
        """Per sentence, the ids fed to the model: the context token (if any), the sentence's tokens, and EOS with
        ``score_eos``. Every id after the first is scored."""
        if not sentences:
            return []
        head = [self.context_id] if self.context_id is not None else []
        tail = [self.tokenizer.eos_token_id] if self.score_eos else []
        return [head + list(ids) + tail
                for ids in self.tokenizer(list(sentences), add_special_tokens=False)["input_ids"]]

    def score(self, sentences: Sequence[str]) -> np.ndarray:
        """(N,) float64 natural-log probabilities of ``sentences`` (0.0 for a sentence with no scored token)."""
        import torch

        seqs = self.token_ids(sentences)
        longest = max(range(len(seqs)), key=lambda i: len(seqs[i]), default=None)
        if longest is not None and self.max_positions and len(seqs[longest]) > self.max_positions:
            raise UserError(f"sentence {sentences[longest]!r} is {len(seqs[longest])} tokens long, more than the "
                             f"{self.max_positions} positions of {self.source}")
        out = np.zeros(len(seqs), dtype=np.float64)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = [i for i in order[start:start + self.batch_size] if len(seqs[i]) > 1]
                if not idx:
                    continue
                L = max(len(seqs[i]) for i in idx)
                ids = torch.full((len(idx), L), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), L), dtype=torch.long)
                for r, i in enumerate(idx):
                    ids[r, : len(seqs[i])] = torch.tensor(seqs[i])
                    mask[r, : len(seqs[i])] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                target = ids[:, 1:]
                tok = logits.gather(-1, target[..., None])[..., 0] - logits.logsumexp(-1)
                out[idx] = torch.where(mask[:, 1:].bool(), tok, 0.0).sum(-1).double().cpu().numpy()
        if not np.isfinite(out).all():
            bad = int(np.flatnonzero(~np.isfinite(out))[0])
            raise UserError(f"{self.source} gave a non-finite log-probability ({out[bad]}) to sentence "
                             f"{sentences[bad]!r}")
        return out

    def __repr__(self) -> str:
        return f"NeuralLM({self.source!r}, device={self.device}, dtype={self.dtype}, batch_size={self.batch_size})"


@dataclass(frozen=True)
class RescoreWeights:
    """total = acoustic + ngram * n-gram LM + neural * neural LM + word * word count (natural-log units)."""

    ngram: float = 0.5
    neural: float = 0.5
    word: float = 0.0

    def __post_init__(self):
        for k in ("ngram", "neural", "word"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise UserError(f"rescoring weight {k} must be a finite number, got {v!r}")


@dataclass
class NBestList:
    """A split's n-best lists, flat: hypothesis h of trial b is entry ``offsets[b] + h`` (best first)."""

    sentences: list[str]         # (H,) the hypotheses' words joined by spaces
    acoustic: np.ndarray         # (H,) CTC log-mass kept by the word decoder
    ngram: np.ndarray            # (H,) natural-log n-gram LM probability (0 without an LM)
    n_words: np.ndarray          # (H,)
    offsets: np.ndarray          # (B + 1,) int64
    neural: np.ndarray | None = None   # (H,) natural-log neural LM probability, once scored

    @classmethod
    def from_hypotheses(cls, hyps: Sequence[Sequence]) -> "NBestList":
        """From per-trial lists of :class:`WordHypothesis` (a trial with none gets the empty sentence, ranked last
        by an acoustic score of -1e30)."""
        sents, ac, ng, nw, offsets = [], [], [], [], [0]
        for b, trial in enumerate(hyps):
            trial = list(trial) or [None]
            for h in trial:
                words = [] if h is None else list(h[0])
                a = -1e30 if h is None else float(h.acoustic_score)
                g = 0.0 if h is None else float(h.lm_score)
                if not (math.isfinite(a) and math.isfinite(g)):
                    raise UserError(f"trial {b}: hypothesis {' '.join(words)!r} has a non-finite acoustic ({a}) "
                                     f"or n-gram ({g}) score")
                sents.append(" ".join(words))
                ac.append(a)
                ng.append(g)
                nw.append(len(words))
            offsets.append(len(sents))
        return cls(sents, np.asarray(ac, np.float64), np.asarray(ng, np.float64), np.asarray(nw, np.float64),
                   np.asarray(offsets, np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def add_neural_scores(self, lm: NeuralLM) -> "NBestList":
        """Score every distinct hypothesis with ``lm`` (each sentence once) and keep the scores; returns self."""
        unique = list(dict.fromkeys(self.sentences))
        by_text = dict(zip(unique, lm.score(unique)))
        self.neural = np.array([by_text[s] for s in self.sentences], dtype=np.float64)
        return self

    def totals(self, weights: RescoreWeights) -> np.ndarray:
        """(H,) total scores under ``weights`` (a neural weight needs :meth:`add_neural_scores` first)."""
        t = self.acoustic + weights.ngram * self.ngram + weights.word * self.n_words
        if weights.neural != 0.0:
            if self.neural is None:
                raise UserError("the n-best list has no neural LM scores: call add_neural_scores(lm) first")
            t = t + weights.neural * self.neural
        return t

    def best(self, weights: RescoreWeights) -> np.ndarray:
        """(B,) flat index of each trial's best hypothesis (ties: the decoder's earlier one)."""
        return self._argmax(self.totals(weights))

    def _argmax(self, totals: np.ndarray) -> np.ndarray:
        counts = np.diff(self.offsets)
        seg_max = np.maximum.reduceat(totals, self.offsets[:-1])
        is_max = totals >= np.repeat(seg_max, counts)
        seg = np.repeat(np.arange(len(counts)), counts)
        first = np.flatnonzero(is_max)
        _, pos = np.unique(seg[first], return_index=True)
        return first[pos]

    def best_sentences(self, weights: RescoreWeights) -> list[str]:
        return [self.sentences[i] for i in self.best(weights)]

    def decoder_best(self) -> list[str]:
        """The decoder's own top hypothesis per trial."""
        return [self.sentences[i] for i in self.offsets[:-1]]


def decode_nbest(decoder, log_probs: Sequence, *, batch_size: int = 256) -> NBestList:
    """Decode per-trial (N_i, 41) log-probs with a :class:`WordDecoder` (its ``nbest``) into an :class:`NBestList`."""
    hyps = []
    items = list(log_probs)
    for i in range(0, len(items), batch_size):
        hyps.extend(decoder.decode(items[i:i + batch_size]))
    return NBestList.from_hypotheses(hyps)


def _hypothesis_edits(nbest: NBestList, references: Sequence[str], normalize: bool) -> tuple[np.ndarray, int]:
    """(H,) word edits of every hypothesis against its trial's reference, and the total reference words."""
    if len(references) != len(nbest):
        raise UserError(f"{len(nbest)} n-best lists but {len(references)} references")
    norm = normalize_text if normalize else str
    vocab: dict[str, int] = {}
    enc = lambda s: [vocab.setdefault(w, len(vocab)) for w in norm(s).split()]  # noqa: E731
    refs = [enc(r) for r in references]
    counts = np.diff(nbest.offsets)
    rep = [refs[b] for b in range(len(refs)) for _ in range(counts[b])]
    return edit_distances([enc(s) for s in nbest.sentences], rep), sum(len(r) for r in refs)


def _wer(edits: np.ndarray, n_ref: int, chosen: np.ndarray) -> float:
    """WER of the chosen flat hypothesis indices, given every hypothesis' edits."""
    return float(edits[chosen].sum()) / n_ref if n_ref else float("nan")


DEFAULT_GRID = {"ngram": (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
                "neural": (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
                "word": (-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0)}


@dataclass
class TuneResult:
    weights: RescoreWeights      # the best weights found
    wer: float                   # their WER on the split
    default_weights: RescoreWeights
    default_wer: float
    evaluated: int               # weight combinations tried


def wer_of(nbest: NBestList, references: Sequence[str], weights: RescoreWeights, *,
           normalize: bool = True) -> float:
    """WER of the hypotheses ``weights`` pick, against the transcripts (normalised when ``normalize``)."""
    return _wer(*_hypothesis_edits(nbest, references, normalize), nbest.best(weights))


def tune_weights(nbest: NBestList, references: Sequence[str], *, default: RescoreWeights = RescoreWeights(),
                 grid: dict[str, Iterable[float]] | None = None, normalize: bool = True) -> TuneResult:
    """Grid search of (ngram, neural, word) over the cached n-best lists for the lowest WER (no re-decoding).

    The grid (default :data:`DEFAULT_GRID`; the neural axis is {0} when the list has no neural scores) always
    includes ``default``, and a candidate replaces the best so far only when strictly better, so the result is
    never worse than the default on this split. Ties keep the earlier candidate.
    """
    edits, n_ref = _hypothesis_edits(nbest, references, normalize)
    if not n_ref:
        raise UserError("the references hold no words: nothing to tune on")
    grid = dict(DEFAULT_GRID if grid is None else grid)
    if nbest.neural is None:        # nothing to weigh on the neural axis
        default = replace(default, neural=0.0)
        grid["neural"] = (0.0,)
    axes = {k: sorted({float(v) for v in grid.get(k, ())} | {getattr(default, k)}) for k in ("ngram", "neural", "word")}
    default_wer = _wer(edits, n_ref, nbest.best(default))
    best_w, best_wer, n = default, default_wer, 0
    for a, b, c in itertools.product(axes["ngram"], axes["neural"], axes["word"]):
        w = RescoreWeights(a, b, c)
        n += 1
        e = _wer(edits, n_ref, nbest.best(w))
        if e < best_wer:
            best_w, best_wer = w, e
    return TuneResult(weights=best_w, wer=best_wer, default_weights=default, default_wer=default_wer, evaluated=n)


def save_weights(path, weights: RescoreWeights, **info) -> Path:
    """Write ``weights`` (and ``info``: where they were tuned, their WER) as JSON to ``path``, for
    :func:`load_weights` (``fastdecoder eval --rescore-weights FILE``)."""
    from fastdecoder.errors import writing

    path = Path(path)
    with writing(path, "rescoring weights file"):
        path.write_text(json.dumps({"weights": asdict(weights), **info}, indent=2) + "\n")
    return path


def load_weights(path) -> RescoreWeights:
    """The :class:`RescoreWeights` of a file :func:`save_weights` wrote (UserError naming the file otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"rescoring weights file {path} does not exist (eval --tune-weights writes one)")
    try:
        rec = json.loads(path.read_text())
        w = rec["weights"]
        if not isinstance(w, dict) or set(w) != {"ngram", "neural", "word"}:
            raise KeyError("weights")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise UserError(f"{path} is not a rescoring weights file: expected JSON with \"weights\": {{\"ngram\": a, "
                        f"\"neural\": b, \"word\": c}}") from None
    return RescoreWeights(**w)


@dataclass
class SplitWords:
    """A split decoded into words: its n-best lists, the weights that pick each trial's sentence, the sentences."""

    nbest: NBestList
    weights: RescoreWeights      # the weights that chose ``hypotheses`` (the decoder's own ranking by default)
    hypotheses: list[str]        # per trial, normalised
    report: dict                 # WERs where references exist, rescoring / tuning details


def decode_split_words(decoder, log_probs: Sequence, references: Sequence[str] | None = None, *,
                       weights: RescoreWeights | None = None, rescore_lm=None, tune: bool = False,
                       batch_size: int = 32, device=None) -> SplitWords:
    """Word-decode a split's per-trial log-probs into n-best lists (``decoder.nbest`` each) and pick a sentence per
    trial: by ``weights`` (default: the decoder's own ranking, acoustic + lm_weight * ngram + word_bonus * words),
    after scoring with the causal LM ``rescore_lm`` if given, or by the weights ``tune`` finds on ``references``.

    Without ``references`` (an unlabelled split) there is no WER and ``tune`` is refused. The report holds ``wer``
    (the decoder's top hypotheses) and, when ``weights`` or ``rescore_lm`` are given, ``rescore_weights`` and
    ``wer_rescored``.
    """
    own = RescoreWeights(decoder.lm_weight, 0.0, decoder.word_bonus)
    given, weights = weights is not None, (own if weights is None else weights)
    if tune and references is None:
        raise UserError("tuning the rescoring weights needs a labelled split (transcriptions): tune on 'val', then "
                        "apply the weights file on 'test'")
    if weights.neural != 0.0 and rescore_lm is None:
        raise UserError(f"the rescoring weights give the neural LM weight {weights.neural}: pass the neural LM "
                        "(--rescore-lm) they were tuned with")
    nb = decode_nbest(decoder, log_probs)
    report: dict = {"nbest": decoder.nbest, "mean_nbest": float(np.diff(nb.offsets).mean()) if len(nb) else 0.0}
    scored = references is not None
    if scored:
        edits, n_ref = _hypothesis_edits(nb, references, True)
        top = nb.offsets[:-1]
        report.update(wer=_wer(edits, n_ref, top), word_edits=int(edits[top].sum()), reference_words=n_ref)
    if rescore_lm is not None:
        neural = NeuralLM(rescore_lm, device=device, batch_size=batch_size)
        t0 = time.perf_counter()
        nb.add_neural_scores(neural)
        report.update(rescore_lm=str(rescore_lm), rescore_seconds=time.perf_counter() - t0)
    if given or rescore_lm is not None:
        report["rescore_weights"] = asdict(weights)
        if scored:
            report["wer_rescored"] = _wer(edits, n_ref, nb.best(weights))
    chosen = weights
    if tune:
        res = tune_weights(nb, references, default=weights)
        report.update(tuned_weights=asdict(res.weights), wer_tuned=res.wer, tune_default_wer=res.default_wer,
                      tune_evaluated=res.evaluated)
        chosen = res.weights
    return SplitWords(nbest=nb, weights=chosen, hypotheses=[normalize_text(s) for s in nb.best_sentences(chosen)],
                      report=report)


def require_transformers() -> None:
    """Raise ValueError (how to install it) when ``transformers`` is missing."""
    _transformers()


def rescore_split(log_probs: Sequence, references: Sequence[str], *, lexicon, lm, lm_weight: float,
                  beam_width: int, nbest: int, rescore_lm=None, rescore_weight: float = 0.5,
                  ngram_weight: float | None = None, word_bonus: float = 0.0, tune: bool = False,
                  batch_size: int = 32, device=None) -> tuple[dict, list[str]]:
    """Word-decode a split into n-best lists, rescore them with ``rescore_lm`` and/or tune the weights
    (:func:`decode_split_words` with a decoder built from these arguments).

    Returns (report, hypotheses): the report holds ``wer`` (the decoder's top hypotheses), ``wer_rescored`` and
    the weights, ``tuned_weights`` / ``wer_tuned`` (with ``tune``); the hypotheses are the ones the rescoring
    weights pick (the tuned weights with ``tune``).
    """
    from fastdecoder.decode.words import WordDecoder

    decoder = WordDecoder(lexicon, lm, lm_weight=lm_weight, beam_width=beam_width, nbest=nbest)
    weights = RescoreWeights(lm_weight if ngram_weight is None else ngram_weight,
                             rescore_weight if rescore_lm is not None else 0.0, word_bonus)
    res = decode_split_words(decoder, log_probs, references, weights=weights, rescore_lm=rescore_lm, tune=tune,
                             batch_size=batch_size, device=device)
    return {"lm": str(lm), **res.report}, res.hypotheses
