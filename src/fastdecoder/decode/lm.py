"""N-gram language models: ARPA files (loaded natively, any order, back-off) and a modified Kneser-Ney estimator.

- :func:`load_arpa` reads an ARPA file (plain or gzip) into the native back-off model that :class:`WordDecoder`
  queries; a missing or malformed file raises ``UserError`` (a ``ValueError``) naming the file and line.
- :func:`build_lm` estimates an interpolated modified Kneser-Ney model (Chen & Goodman 1998, as KenLM's ``lmplz``)
  from a sentence corpus and writes it as ARPA: what ``fastdecoder lm build --text corpus.txt --order 3 --out lm.arpa``
  runs.

Estimator (sentences padded as ``<s> w1 .. wk </s>``; N = order):

- adjusted counts a(g): the raw count for N-grams and for n-grams that start with ``<s>``; otherwise the continuation
  count N1+(. g), the number of distinct words seen before g;
- discounts per order n from the counts-of-counts t_k of a (k = 1..4, all n-grams of order n but the unigram ``<s>``):
  Y = t1 / (t1 + 2 t2), D1 = 1 - 2 Y t2/t1, D2 = 2 - 3 Y t3/t2, D3+ = 3 - 4 Y t4/t3; where these are undefined
  or outside (0, k] (tiny corpora) the order falls back to (0.5, 1.0, 1.5), as KenLM's ``--discount_fallback``;
- for a context c with n-grams c w: u(w | c) = (a(c w) - D(a(c w))) / sum_x a(c x) and
  gamma(c) = (D1 N1(c .) + D2 N2(c .) + D3+ N3+(c .)) / sum_x a(c x);
- interpolated: p(w | c) = u(w | c) + gamma(c) p(w | c minus its oldest word), down to
  p(w) = u(w) + gamma() / |V|, |V| = the vocabulary without ``<s>`` (``</s>`` and ``<unk>`` included);
- ARPA: log10 p for every seen n-gram, back-off log10 gamma(c) on every context; ``<s>`` gets log10 p = -99.
  The back-off query of such a file gives exactly the interpolated probabilities, and they sum to 1 over the
  vocabulary (without ``<s>``) in every context.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import re
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from fastdecoder import _words
from fastdecoder.errors import UserError, writing

__all__ = ["ArpaLM", "load_arpa", "build_lm", "estimate_kneser_ney", "KneserNeyModel", "normalize_text",
           "BOS", "EOS", "UNK"]

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
_LN10 = math.log(10.0)


def read_text_bytes(path) -> bytes:
    """The bytes of a text file; gzip-compressed files (by their magic bytes, any name) are decompressed in 1 MiB
    chunks, and refused (LimitError) once the output passes `limits.GZIP_MAX_RATIO` times the compressed size or
    `limits.GZIP_MAX_BYTES`: a small file never costs more memory than its size justifies."""
    from fastdecoder.limits import GZIP_MAX_BYTES, GZIP_MAX_RATIO, LimitError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            fh.seek(0)
            return fh.read()
        size = os.fstat(fh.fileno()).st_size
        limit = min(GZIP_MAX_RATIO * size, GZIP_MAX_BYTES)
        fh.seek(0)
        out = bytearray()
        try:
            with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                while chunk := gz.read(1 << 20):
                    out += chunk
                    if len(out) > limit:
                        raise LimitError(f"{path}: the {size}-byte gzip file decompresses to more than {limit} "
                                         f"bytes (limits: {GZIP_MAX_RATIO}x its size, {GZIP_MAX_BYTES} bytes in "
                                         "all); a gzip bomb, or decompress it yourself if it is genuine")
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(f"{path}: broken gzip file ({e})") from None
    return bytes(out)


_WORD_RE = re.compile(r"[a-z0-9']+")


def normalize_text(text: str) -> str:
    """Lower-case words of a transcript: letters, digits and inner apostrophes; other characters separate words.

    ``"I don't know, 'Bob'."`` -> ``"i don't know bob"`` (the form the cmudict lexicon and built LMs use).
    """
    words = (w.strip("'") for w in _WORD_RE.findall(text.lower()))
    return " ".join(w for w in words if w)


# ----------------------------------------------------------------------------------------------------- ARPA model


class ArpaLM:
    """A back-off n-gram LM read from an ARPA file, held natively (shared with the decoder, no copy).

    Words are matched exactly (case-sensitive). Probabilities are log10 as in the file.
    """

    def __init__(self, native: "_words.ArpaLM", source: str = "<text>"):
        self._native = native
        self.source = source
        self._vocab: list[str] | None = None

    @classmethod
    def load(cls, path) -> "ArpaLM":
        """Load an ARPA file (plain or gzip). Raises UserError (a ValueError) naming the line of a malformed file."""
        data = read_text_bytes(path)
        try:
            return cls(_words.ArpaLM.from_text(data), str(path))
        except ValueError as e:
            raise UserError(f"{path}: {e}") from None

    @classmethod
    def from_text(cls, text: str | bytes) -> "ArpaLM":
        """Parse ARPA text held in memory."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return cls(_words.ArpaLM.from_text(data))

    @property
    def native(self):
        return self._native

    @property
    def order(self) -> int:
        return self._native.order

    @property
    def counts(self) -> list[int]:
        """n-grams per order (1, 2, ..., N) as the file declares."""
        return list(self._native.counts)

    @property
    def vocabulary(self) -> list[str]:
        if self._vocab is None:
            self._vocab = list(self._native.vocabulary())
        return self._vocab

    @property
    def has_unk(self) -> bool:
        return self._native.unk >= 0

    def __len__(self) -> int:
        return self._native.vocab_size

    def __contains__(self, word: str) -> bool:
        return self._native.find(word) >= 0

    def _id(self, word: str) -> int:
        i = self._native.find(word)
        if i < 0:
            i = self._native.unk
            if i < 0:
                raise UserError(f"word {word!r} is not in the LM vocabulary and the LM has no {UNK}")
        return i

    def log10_prob(self, word: str, context: Sequence[str] = ()) -> float:
        """log10 p(word | context) with back-off (context oldest first; unknown words map to <unk>)."""
        return float(self._native.log10_prob([self._id(w) for w in context], self._id(word)))

    def log_prob(self, word: str, context: Sequence[str] = ()) -> float:
        """Natural-log p(word | context)."""
        return self.log10_prob(word, context) * _LN10

    def score_sentence(self, words: Sequence[str] | str, *, bos: bool = True, eos: bool = True) -> float:
        """log10 probability of a sentence (``<s>`` context first and ``</s>`` at the end by default)."""
        if isinstance(words, str):
            words = words.split()
        ids = [self._native.bos] if bos and self._native.bos >= 0 else []
        total = 0.0
        seq = [self._id(w) for w in words] + ([self._native.eos] if eos and self._native.eos >= 0 else [])
        for w in seq:
            total += self._native.log10_prob(ids[-(self.order - 1):] if self.order > 1 else [], w)
            ids.append(w)
        return total

    def memory_bytes(self) -> int:
        return int(self._native.memory_bytes())

    def __repr__(self) -> str:
        return f"ArpaLM(order={self.order}, counts={self.counts}, source={self.source!r})"


def load_arpa(path) -> ArpaLM:
    """Load an ARPA language model (plain or .gz). Malformed files raise UserError (a ValueError) naming the line."""
    return ArpaLM.load(path)


# --------------------------------------------------------------------------------------- modified Kneser-Ney


@dataclass
class KneserNeyModel:
    """The estimator's result (n-gram tuples of words; orders 1..N). ``to_arpa()`` writes it."""

    order: int
    raw_counts: list[dict]  # [n] -> {ngram: count}; index 0 unused
    adjusted_counts: list[dict]  # [n] -> {ngram: adjusted count}
    discounts: list[tuple[float, float, float]]  # [n] -> (D1, D2, D3+); index 0 unused
    fallback: list[bool]  # [n] -> True where the fallback discounts were used
    prob: list[dict] = field(default_factory=list)  # [n] -> {ngram: p (linear, interpolated)}
    gamma: dict = field(default_factory=dict)  # context tuple -> interpolation weight (back-off)
    vocabulary: list[str] = field(default_factory=list)  # without <s>

    def log10_prob(self, word: str, context: Sequence[str] = ()) -> float:
        """log10 p(word | context) by the interpolated model (same as querying the written ARPA)."""
        ctx = tuple(context)[-(self.order - 1):] if self.order > 1 else ()
        if (word,) not in self.prob[1]:
            word = UNK
        acc = 0.0
        for k in range(len(ctx), -1, -1):
            c = ctx[len(ctx) - k:]
            g = c + (word,)
            p = self.prob[k + 1].get(g)
            if p is not None:
                return acc + math.log10(p)
            if c in self.gamma:
                acc += math.log10(self.gamma[c])
        raise KeyError(word)

    def to_arpa(self) -> str:
        buf = io.StringIO()
        self.write_arpa(buf)
        return buf.getvalue()

    def write_arpa(self, out) -> None:
        """Write ARPA text to a file object (or a path)."""
        if isinstance(out, (str, os.PathLike)):
            path = Path(out)
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "wt", encoding="utf-8", newline="\n") as f:
                self.write_arpa(f)
            return
        N = self.order
        rows = [None] + [sorted(self.prob[n]) for n in range(1, N + 1)]
        rows[1] = sorted(set(rows[1]) | {(BOS,)})
        out.write("\\data\\\n")
        for n in range(1, N + 1):
            out.write(f"ngram {n}={len(rows[n])}\n")
        for n in range(1, N + 1):
            out.write(f"\n\\{n}-grams:\n")
            prob = self.prob[n]
            for g in rows[n]:
                lp = "-99" if g == (BOS,) else _fmt(math.log10(prob[g]))
                words = " ".join(g)
                if n < N and g in self.gamma:
                    out.write(f"{lp}\t{words}\t{_fmt(math.log10(self.gamma[g]))}\n")
                else:
                    out.write(f"{lp}\t{words}\n")
        out.write("\n\\end\\\n")


def _fmt(x: float) -> str:
    s = f"{x:.7g}"
    return "0" if s == "-0" else s


def _kn_discounts(adjusted: dict, exclude=()) -> tuple[tuple[float, float, float], bool]:
    t = Counter()
    for g, a in adjusted.items():
        if a <= 4 and g not in exclude:
            t[a] += 1
    t1, t2, t3, t4 = t[1], t[2], t[3], t[4]
    try:
        y = t1 / (t1 + 2 * t2)
        d = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
    except ZeroDivisionError:
        return FALLBACK_DISCOUNTS, True
    if not all(0 < dk <= k + 1 for k, dk in enumerate(d)):
        return FALLBACK_DISCOUNTS, True
    return d, False


def estimate_kneser_ney(sentences: Iterable[Sequence[str] | str], order: int = 3, *,
                        discounts: Sequence[Sequence[float]] | None = None) -> KneserNeyModel:
    """Interpolated modified Kneser-Ney estimate (see the module docstring for the exact definition).

    sentences: word lists or whitespace-separated strings (used as given: normalise first if needed); empty
    sentences are skipped. discounts: optional fixed (D1, D2, D3+) per order 1..N instead of the estimated ones.
    """
    from fastdecoder.errors import UserError
    from fastdecoder.limits import MAX_LM_ORDER, LimitError

    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise UserError(f"order must be an integer >= 1, got {order!r}")
    if order > MAX_LM_ORDER:
        raise LimitError(f"order {order} exceeds the largest supported n-gram order, {MAX_LM_ORDER}")
    N = order
    raw = [None] + [Counter() for _ in range(N)]
    n_sent = 0
    for s in sentences:
        words = s.split() if isinstance(s, str) else list(s)
        if not words:
            continue
        for w in words:
            if w in (BOS, EOS):
                raise UserError(f"sentence {n_sent + 1} contains the reserved token {w!r}")
        n_sent += 1
        toks = (BOS, *words, EOS)
        L = len(toks)
        for n in range(1, N + 1):
            c = raw[n]
            for i in range(L - n + 1):
                c[toks[i:i + n]] += 1
    if n_sent == 0:
        raise UserError("the corpus has no (non-empty) sentence")
    if not raw[N]:  # no sentence is long enough for an N-gram: the higher orders would be empty
        longest = max(n for n in range(1, N + 1) if raw[n])
        raise UserError(f"order {N} is higher than the corpus supports: its longest sentence gives {longest}-grams "
                         f"at most (with <s> and </s>); use an order <= {longest}")

    # Adjusted counts: raw for the highest order and for n-grams starting with <s>, else left continuation counts.
    adj = [None] * (N + 1)
    adj[N] = dict(raw[N])
    for n in range(N - 1, 0, -1):
        a = Counter()
        for g in raw[n + 1]:
            a[g[1:]] += 1
        for g, c in raw[n].items():
            if g[0] == BOS:
                a[g] = c
        adj[n] = dict(a)

    if discounts is not None:
        if len(discounts) != N:
            raise UserError(f"discounts needs one (D1, D2, D3+) per order 1..{N}")
        disc = [None] + [tuple(float(x) for x in d) for d in discounts]
        fallback = [False] * (N + 1)
    else:
        disc, fallback = [None], [False]
        for n in range(1, N + 1):
            d, fb = _kn_discounts(adj[n], exclude={(BOS,)} if n == 1 else ())
            disc.append(d)
            fallback.append(fb)

    def discount(n: int, a: int) -> float:
        d = disc[n]
        return d[0] if a == 1 else d[1] if a == 2 else d[2]

    # Per context: the sum of adjusted counts and the interpolation weight gamma.
    prob: list[dict] = [None] * (N + 1)
    gamma: dict = {}
    vocab = sorted({g[0] for g in raw[1]} - {BOS} | {UNK, EOS})
    for n in range(1, N + 1):
        denom: dict = defaultdict(int)
        nk: dict = defaultdict(lambda: [0, 0, 0])
        for g, a in adj[n].items():
            if n == 1 and g == (BOS,):
                continue
            c = g[:-1]
            denom[c] += a
            nk[c][min(a, 3) - 1] += 1
        d = disc[n]
        for c, tot in denom.items():
            k = nk[c]
            gamma[c] = (d[0] * k[0] + d[1] * k[1] + d[2] * k[2]) / tot
        p: dict = {}
        if n == 1:
            uniform = gamma[()] / len(vocab)
            for w in vocab:
                a = adj[1].get((w,), 0)
                p[(w,)] = (a - discount(1, a)) / denom[()] + uniform if a else uniform
        else:
            lower = prob[n - 1]
            for g, a in adj[n].items():
                c = g[:-1]
                p[g] = (a - discount(n, a)) / denom[c] + gamma[c] * lower[g[1:]]
        prob[n] = p
    # Back-offs live on contexts that exist as n-grams (orders 1..N-1); <s> is a context only.
    gamma = {c: v for c, v in gamma.items() if 0 < len(c) < N}
    return KneserNeyModel(order=N, raw_counts=[None] + [dict(c) for c in raw[1:]], adjusted_counts=adj,
                          discounts=disc, fallback=fallback, prob=prob, gamma=gamma, vocabulary=vocab)


def _iter_corpus(text, normalize: bool):
    if isinstance(text, (str, os.PathLike)):
        data = read_text_bytes(text).decode("utf-8", errors="replace")
        lines = data.splitlines()
    else:
        lines = text
    for line in lines:
        if not isinstance(line, str):
            line = " ".join(line)
        yield normalize_text(line) if normalize else line


def build_lm(text, order: int = 3, out_path=None, *, normalize: bool = True,
             discounts: Sequence[Sequence[float]] | None = None) -> ArpaLM:
    """Estimate a modified Kneser-Ney n-gram LM from a sentence corpus and (optionally) write it as ARPA.

    Args:
        text: a corpus file (one sentence per line; plain or gzip) or an iterable of sentence strings / word lists.
        order: n-gram order, 1 .. `limits.MAX_LM_ORDER` (10), and no higher than the longest sentence + 2 (<s>, </s>).
        out_path: where to write the ARPA file (``.gz`` suffix: gzip; its folder must exist); None = do not write.
        normalize: lower-case and strip punctuation first (:func:`normalize_text`), as cmudict words are.
        discounts: optional fixed (D1, D2, D3+) per order instead of the estimated ones.

    Returns the model loaded as :class:`ArpaLM` (ready for :class:`WordDecoder`); the estimator's details
    (counts, discounts, whether an order fell back to fixed discounts) are on ``.kneser_ney``.
    """
    out = None if out_path is None else Path(out_path)
    if out is not None and not out.parent.is_dir():  # checked before the corpus is read; no folder is created
        raise UserError(f"cannot write {out}: {out.parent} is not an existing folder (no folder is created)")
    model = estimate_kneser_ney(_iter_corpus(text, normalize), order, discounts=discounts)
    arpa = model.to_arpa()
    if out is not None:
        with writing(out, "ARPA file"):
            if out.suffix == ".gz":
                out.write_bytes(gzip.compress(arpa.encode("utf-8")))
            else:
                out.write_text(arpa, encoding="utf-8")
    lm = ArpaLM.from_text(arpa)
    lm.source = str(out_path) if out_path is not None else "<build_lm>"
    lm.kneser_ney = model
    return lm
