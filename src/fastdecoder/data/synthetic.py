"""A synthetic dataset that looks like the real ones: learnable, but not trivially.

Generative model, per trial (20 ms bins):
  sentence  = 2..6 pseudo-words from a Zipf-weighted vocabulary, each word 2..6 random phonemes, SIL (40) after
              every word (so the sentence ends with SIL, as in the real data);
  timing    = a few silent (rest) bins, then each label for a random number of bins (scaled by a per-trial speaking
              rate), then rest again; trailing rest is extended where needed so that a (kernel, stride) patching
              front end still has enough output frames for CTC;
  response  = Gaussian-smoothed label one-hots x a sparse tuning matrix (each channel responds to a few classes
              with random-sign gains) + a condition-independent "speaking" response;
  day drift = per-day random walks of a cross-channel mixing matrix, per-channel signal gain and offset (so the
              per-day input layers have something to undo);
  noise     = white Gaussian noise (per-channel level) + a per-trial constant offset per channel;
  z-score   = per channel within each recording block of a day, like the real preprocessing.
Everything is vectorised over trials; one numpy Generator seeded from `spec.seed` makes it deterministic.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import shutil
import typing
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from fastdecoder.data.b2t24 import write_b2t24
from fastdecoder.data.b2t25 import session_folders, trial_id, write_b2t25
from fastdecoder.data.dataset import Dataset, Split
from fastdecoder.errors import UserError
from fastdecoder.limits import MAX_SYNTH_VALUES, LimitError, short_repr
from fastdecoder.phonemes import N_CLASSES, PHONEMES, SIL

#: marker written next to / inside synthetic output, so re-generating may replace it without `overwrite`
SENTINEL = ".fastdecoder-synthetic.json"
_SPLIT_KEYS_B2T24 = {"train": "train", "val": "test", "test": "competition"}


@dataclass
class SynthSpec:
    """Parameters of the synthetic dataset. Ranges are (low, high), both inclusive; times are in 20 ms bins;
    strengths are in units of the (pre-z-score) noise standard deviation of an average channel."""

    n_days: int = 4  #: sessions
    trials_per_day: int = 64  #: train trials per day
    val_trials_per_day: int = 16  #: val trials per day (b2t24 'test')
    test_trials_per_day: int = 8  #: unlabeled held-out trials per day (b2t24 'competition'); 0 -> no test split
    n_features: int = 256  #: channels C (the real data: 256 for b2t24, 512 for b2t25)
    vocab_size: int = 200  #: pseudo-words in the vocabulary
    phones_per_word: tuple[int, int] = (2, 6)  #: phonemes per pseudo-word
    words_per_sentence: tuple[int, int] = (2, 6)  #: words per sentence
    word_zipf: float = 1.0  #: word frequency ~ 1 / rank**word_zipf (0 = uniform)
    min_phone_bins: int = 4  #: shortest label duration before the rate scaling
    max_phone_bins: int = 10  #: longest label duration before the rate scaling
    rate_jitter: float = 0.15  #: sd of the per-trial log speaking-rate factor applied to all durations
    lead_bins: tuple[int, int] = (4, 12)  #: rest bins before speech
    trail_bins: tuple[int, int] = (4, 12)  #: rest bins after speech (extended for `ctc_window`)
    phonemes_per_channel: int = 4  #: classes (of 1..40) each channel is tuned to
    tuning_strength: float = 1.0  #: sd of the tuning gains
    response_sd_bins: float = 1.5  #: sd of the Gaussian temporal smoothing of the tuned response
    speech_modulation: float = 0.5  #: sd over channels of the condition-independent speaking response
    noise_std: float = 1.0  #: white noise sd of an average channel (channel levels vary by `noise_spread`)
    noise_spread: float = 0.25  #: sd of the per-channel log noise level
    trial_offset_std: float = 0.1  #: per-trial constant offset per channel
    day_drift: float = 0.2  #: per-day random-walk step of the log signal gain and of the offset of each channel
    day_mixing: float = 0.3  #: per-day random-walk step of the cross-channel mixing (relative Frobenius scale)
    blocks_per_day: int = 2  #: recording blocks per day; features are z-scored per block
    zscore: bool = True  #: z-score each channel per block (as the real preprocessing does)
    ctc_window: tuple[int, int] = (32, 4)  #: (kernel, stride): ensure floor((T - kernel) / stride) >= labels +
    #: adjacent repeats, i.e. CTC is feasible for the b2t24 (32, 4) and b2t25 (14, 4) front ends; (0, 1) disables
    test_labeled: bool = False  #: also store labels for the test split (the real test data has none)
    seed: int = 0  #: seed of the numpy Generator (same seed -> identical data)

    def __post_init__(self) -> None:
        self._check_types()
        for name in ("phones_per_word", "words_per_sentence", "lead_bins", "trail_bins", "ctc_window"):
            lo, hi = getattr(self, name)
            if name != "ctc_window" and not 0 <= lo <= hi:
                raise UserError(f"SynthSpec.{name} must be (low, high) with 0 <= low <= high, got {(lo, hi)}")
        if self.phones_per_word[0] < 1 or self.words_per_sentence[0] < 1:
            raise UserError("SynthSpec: words need >= 1 phoneme and sentences >= 1 word")
        if not 1 <= self.min_phone_bins <= self.max_phone_bins:
            raise UserError(f"SynthSpec: need 1 <= min_phone_bins <= max_phone_bins, got "
                            f"{self.min_phone_bins}, {self.max_phone_bins}")
        if self.n_days < 1 or self.trials_per_day < 1 or self.n_features < 1 or self.vocab_size < 1:
            raise UserError("SynthSpec: n_days, trials_per_day, n_features and vocab_size must be >= 1")
        if self.val_trials_per_day < 0 or self.test_trials_per_day < 0 or self.blocks_per_day < 1:
            raise UserError("SynthSpec: trial counts must be >= 0 and blocks_per_day >= 1")
        if not 1 <= self.phonemes_per_channel <= N_CLASSES - 1:
            raise UserError(f"SynthSpec.phonemes_per_channel must lie in 1..{N_CLASSES - 1}")
        if self.ctc_window[1] < 1 or self.ctc_window[0] < 0:
            raise UserError(f"SynthSpec.ctc_window must be (kernel >= 0, stride >= 1), got {self.ctc_window}")
        values = self.estimated_values()
        if values > MAX_SYNTH_VALUES:
            per_day = self.trials_per_day + self.val_trials_per_day + self.test_trials_per_day
            raise LimitError(f"SynthSpec: n_days={self.n_days} x {per_day} trials x n_features={self.n_features} (with "
                             f"vocab_size={self.vocab_size}) would generate about {values:.3g} float32 values, more "
                             f"than the limit of {MAX_SYNTH_VALUES} ({MAX_SYNTH_VALUES * 4 // 2**30} GiB)")

    def estimated_values(self) -> int:
        """About how many float32 values generating this dataset holds at once: every trial's features at its mean
        length, the per-day (C, C) mixing matrices, the (vocab_size, max phonemes) vocabulary (and one per
        recording block: the per-block loop)."""
        mean = lambda pair: (pair[0] + pair[1]) / 2  # noqa: E731
        bins = (mean(self.lead_bins) + mean(self.trail_bins)
                + mean(self.words_per_sentence) * (mean(self.phones_per_word) + 1)
                * (self.min_phone_bins + self.max_phone_bins) / 2 + self.ctc_window[0]
                + 2 * math.ceil(3 * self.response_sd_bins))
        trials = self.n_days * (self.trials_per_day + self.val_trials_per_day + self.test_trials_per_day)
        return int(trials * max(bins, 1) * self.n_features + (self.n_days + 2) * self.n_features ** 2
                   + self.vocab_size * self.phones_per_word[1] + self.n_days * self.blocks_per_day)


    def _check_types(self) -> None:
        """Every field of its declared type (ints integral, floats finite, pairs of two ints) and >= 0; ValueError
        naming the field (config key ``data.synthetic.<field>``) otherwise. Integral floats become ints."""
        hints = typing.get_type_hints(SynthSpec)
        for f in dataclasses.fields(self):
            value, tp = getattr(self, f.name), hints[f.name]
            where = f"SynthSpec.{f.name} (config key data.synthetic.{f.name})"
            if tp is bool:
                if not isinstance(value, bool):
                    raise UserError(f"{where} must be true or false, got {short_repr(value)}")
                continue
            pair = tp is not int and tp is not float
            items = list(value) if pair and isinstance(value, (list, tuple)) else [value]
            if pair and len(items) != 2:
                raise UserError(f"{where} must be a pair [low, high] of integers, got {short_repr(value)}")
            for v in items:
                number = isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)
                if not number or (tp is not float and v != int(v)) or v < 0:
                    kind = "number" if tp is float else "integer"
                    raise UserError(f"{where} must be a finite non-negative {kind}{' pair' if pair else ''}, "
                                    f"got {short_repr(value)}")
            cast = [float(v) if tp is float else int(v) for v in items]
            setattr(self, f.name, tuple(cast) if pair else cast[0])


def _vocabulary(rng: np.random.Generator, spec: SynthSpec) -> list[np.ndarray]:
    """`vocab_size` distinct pseudo-words, each an int64 array of phoneme ids in 1..39."""
    words: list[np.ndarray] = []
    seen: set[tuple] = set()
    lo, hi = spec.phones_per_word
    while len(words) < spec.vocab_size:
        need = spec.vocab_size - len(words)
        lens = rng.integers(lo, hi + 1, size=need)
        phones = rng.integers(1, len(PHONEMES) + 1, size=int(lens.sum()))
        for w in np.split(phones, np.cumsum(lens)[:-1]):
            key = tuple(w.tolist())
            if key not in seen:
                seen.add(key)
                words.append(w.astype(np.int64))
    return words


def _spelling(word: np.ndarray) -> str:
    return "".join(PHONEMES[p - 1].lower() for p in word)


def _day_names(fmt: str, n_days: int) -> list[str]:
    if fmt == "b2t25":
        start = date(2023, 8, 11)
        return [f"t15.{(start + timedelta(days=7 * d)):%Y.%m.%d}" for d in range(n_days)]
    return [f"day{d:02d}" for d in range(n_days)]


def generate_synthetic(spec: SynthSpec | None = None, format: str = "b2t25") -> Dataset:
    """Generate the dataset in memory, laid out (trial order, ids, day names) exactly as `format`'s loader returns
    it after `write_synthetic`."""
    spec = spec or SynthSpec()
    if format not in ("b2t24", "b2t25"):
        raise UserError(f"unknown format {format!r}; expected 'b2t24' or 'b2t25'")
    rng = np.random.default_rng(spec.seed)
    C, K = spec.n_features, N_CLASSES  # class 0 doubles as the rest state

    # --- the "subject": vocabulary, tuning, channel properties (shared by all days)
    vocab = _vocabulary(rng, spec)
    word_p = 1.0 / np.arange(1, spec.vocab_size + 1, dtype=np.float64) ** spec.word_zipf
    word_p /= word_p.sum()
    tuning = np.zeros((K, C), dtype=np.float32)
    tuned = np.argsort(rng.random((C, K - 1)), axis=1)[:, : spec.phonemes_per_channel] + 1  # (C, k) classes
    gains = rng.standard_normal((C, spec.phonemes_per_channel)) * spec.tuning_strength
    tuning[tuned, np.arange(C)[:, None]] = gains
    speech_gain = (rng.standard_normal(C) * spec.speech_modulation).astype(np.float32)
    noise_level = (spec.noise_std * np.exp(spec.noise_spread * rng.standard_normal(C))).astype(np.float32)

    # --- per-day drift: random walks over days
    mix = np.eye(C)
    log_gain = np.zeros(C)
    offset = np.zeros(C)
    day_mix, day_gain, day_offset = [], [], []
    for _ in range(spec.n_days):
        mix = mix + spec.day_mixing * rng.standard_normal((C, C)) / math.sqrt(C)
        log_gain = log_gain + spec.day_drift * rng.standard_normal(C)
        offset = offset + spec.day_drift * rng.standard_normal(C)
        day_mix.append(mix.astype(np.float32))
        day_gain.append(np.exp(log_gain).astype(np.float32))
        day_offset.append(offset.astype(np.float32))

    # --- trials: recording order within each day; split and block per trial
    counts = {"train": spec.trials_per_day, "val": spec.val_trials_per_day, "test": spec.test_trials_per_day}
    per_day = sum(counts.values())
    n = spec.n_days * per_day
    day_of = np.repeat(np.arange(spec.n_days), per_day)
    split_codes = np.concatenate([np.full(c, s) for s, c in enumerate(counts.values())])
    split_of = np.concatenate([rng.permutation(split_codes) for _ in range(spec.n_days)])
    block_of = np.tile(np.arange(per_day) * spec.blocks_per_day // per_day, spec.n_days)

    # --- sentences
    lo, hi = spec.words_per_sentence
    n_words = rng.integers(lo, hi + 1, size=n)
    word_ids = rng.choice(spec.vocab_size, size=int(n_words.sum()), p=word_p)
    sil = np.array([SIL], dtype=np.int64)
    targets, texts = [], []
    for ws in np.split(word_ids, np.cumsum(n_words)[:-1]):
        targets.append(np.concatenate([part for w in ws for part in (vocab[w], sil)]))
        texts.append(" ".join(_spelling(vocab[w]) for w in ws))
    n_labels = np.array([t.size for t in targets])

    # --- timing: label durations, lead/trail rest, CTC feasibility
    rate = np.exp(spec.rate_jitter * rng.standard_normal(n))
    dur = rng.integers(spec.min_phone_bins, spec.max_phone_bins + 1, size=int(n_labels.sum()))
    dur = np.maximum(1, np.rint(dur * np.repeat(rate, n_labels))).astype(np.int64)
    lead = rng.integers(spec.lead_bins[0], spec.lead_bins[1] + 1, size=n)
    trail = rng.integers(spec.trail_bins[0], spec.trail_bins[1] + 1, size=n)
    speech = np.add.reduceat(dur, np.cumsum(n_labels) - n_labels)
    kernel, stride = spec.ctc_window
    if kernel > 0:
        repeats = np.array([int(np.count_nonzero(t[1:] == t[:-1])) for t in targets])
        need = kernel + stride * (n_labels + repeats)
        trail += np.maximum(0, need - (lead + speech + trail))
    T = lead + speech + trail

    # --- one time axis for all trials, with rest gaps wide enough that smoothing never leaks between trials
    half = max(1, int(math.ceil(3 * spec.response_sd_bins)))
    seg_cls, seg_len = [], []
    label_start = np.concatenate([[0], np.cumsum(n_labels)])
    for i in range(n):
        seg_cls += [np.array([0]), targets[i], np.array([0])]
        seg_len += [np.array([half + lead[i]]), dur[label_start[i]:label_start[i + 1]], np.array([trail[i] + half])]
    cls = np.repeat(np.concatenate(seg_cls), np.concatenate(seg_len))
    span = T + 2 * half
    start = np.concatenate([[0], np.cumsum(span)[:-1]]) + half  # first bin of each trial
    total = cls.size
    onehot = np.zeros((total + 2 * half, K), dtype=np.float32)
    onehot[np.arange(total) + half, cls] = 1.0
    onehot[:half, 0] = onehot[total + half:, 0] = 1.0
    taps = np.exp(-0.5 * (np.arange(-half, half + 1) / max(spec.response_sd_bins, 1e-6)) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    smooth = np.zeros((total, K), dtype=np.float32)
    for j, w in enumerate(taps):
        smooth += w * onehot[j:j + total]
    smooth[:, 0] = 1.0 - smooth[:, 0]  # column 0 now: "speaking" (1 - rest), drives the speech response
    tuning[0] = speech_gain

    # --- per day: (response x tuning) -> mixing -> gain -> offset, as one (K, C) map per day; noise; trial offsets
    trial_of_bin = np.repeat(np.arange(n), span)
    x = np.empty((total, C), dtype=np.float32)
    day_bounds = np.searchsorted(trial_of_bin, np.arange(spec.n_days + 1) * per_day)
    for d in range(spec.n_days):
        a, b = day_bounds[d], day_bounds[d + 1]
        x[a:b] = smooth[a:b] @ ((tuning @ day_mix[d]) * day_gain[d]) + day_offset[d]
    x += rng.standard_normal((total, C), dtype=np.float32) * noise_level
    x += (rng.standard_normal((n, C), dtype=np.float32) * spec.trial_offset_std)[trial_of_bin]

    # --- cut the trials out; z-score per (day, block)
    feats = [x[s:s + t] for s, t in zip(start, T)]
    if spec.zscore:
        for d in range(spec.n_days):
            for blk in range(spec.blocks_per_day):
                members = np.flatnonzero((day_of == d) & (block_of == blk))
                if members.size == 0:
                    continue
                cat = np.concatenate([feats[i] for i in members])
                mu, sd = cat.mean(0), cat.std(0) + 1e-6
                for i in members:
                    feats[i] = (feats[i] - mu) / sd
    feats = [np.ascontiguousarray(f, dtype=np.float32) for f in feats]

    # --- trial numbers within each (day, block) in recording order, over all splits (as the real 'trial_num')
    trial_num = np.zeros(n, dtype=np.int64)
    counters: dict = {}
    for i in range(n):
        key = (int(day_of[i]), int(block_of[i]))
        trial_num[i] = counters.get(key, 0)
        counters[key] = trial_num[i] + 1

    # --- splits in the loaders' order: day-major, recording order within a day
    day_names = _day_names(format, spec.n_days)
    splits: dict[str, Split] = {}
    for code, name in enumerate(counts):
        idx = np.flatnonzero(split_of == code)
        if idx.size == 0:
            continue
        ids, k_in_day = [], {}
        for i in idx:
            d = int(day_of[i])
            k = k_in_day.get(d, 0)
            k_in_day[d] = k + 1
            if format == "b2t25":
                ids.append(trial_id(day_names[d], name, f"trial_{k:04d}"))
            else:
                ids.append(f"b2t24/day{d:02d}/{_SPLIT_KEYS_B2T24[name]}/{k}")
        labeled = name != "test" or spec.test_labeled
        splits[name] = Split(features=[feats[i] for i in idx],
                             targets=[targets[i] for i in idx] if labeled else None,
                             day=day_of[idx], trial_ids=ids,
                             transcriptions=[texts[i] for i in idx] if labeled else None,
                             block=block_of[idx] if format == "b2t25" else None,
                             trial_num=trial_num[idx] if format == "b2t25" else None)
    return Dataset(format=format, n_features=C, n_days=spec.n_days, day_names=day_names, splits=splits)


def _sentinel_path(out: Path, fmt: str) -> Path:
    return out / SENTINEL if fmt == "b2t25" else out.with_name(out.name + SENTINEL)


def _clear_target(out: Path, fmt: str, overwrite: bool) -> None:
    """Make room for new output at `out`; refuse to replace anything not written by write_synthetic unless
    `overwrite`."""
    ours = _sentinel_path(out, fmt).is_file()
    if fmt == "b2t24":
        if out.is_dir():
            raise FileExistsError(f"{out} is a folder; b2t24 output is a single pickle file")
        if out.exists() and not (ours or overwrite):
            raise FileExistsError(f"{out} exists and was not written by write_synthetic; pass overwrite=True to "
                                  "replace it")
        return
    if out.is_file():
        raise FileExistsError(f"{out} is a file; b2t25 output is a folder of session folders")
    if out.is_dir() and any(out.iterdir()):
        if not (ours or overwrite):
            raise FileExistsError(f"{out} is not empty and was not written by write_synthetic; pass overwrite=True "
                                  "to replace its session folders")
        for sess in session_folders(out):
            shutil.rmtree(sess)


def write_synthetic(out_path: str | Path, format: str, spec: SynthSpec | None = None, *,
                    overwrite: bool = False) -> Path:
    """Generate a synthetic dataset and write it: a b2t24 pickle file at `out_path`, or a b2t25 folder at
    `out_path` with one folder per session (data_train/val/test.hdf5; test without labels). Output previously
    written here by write_synthetic is replaced; anything else only with `overwrite=True`. Returns the path."""
    spec = spec or SynthSpec()
    out = Path(out_path)
    if format not in ("b2t24", "b2t25"):
        raise UserError(f"unknown format {format!r}; expected 'b2t24' or 'b2t25'")
    _clear_target(out, format, overwrite)
    ds = generate_synthetic(spec, format)
    if format == "b2t24":
        write_b2t24(out, ds)
    else:
        write_b2t25(out, ds)
    _sentinel_path(out, format).write_text(json.dumps(dataclasses.asdict(spec), indent=1))
    return out


def written_from(out_path: str | Path, format: str, spec: SynthSpec) -> bool:
    """True if ``out_path`` holds the output of ``write_synthetic(out_path, format, spec)`` (its stamp matches)."""
    stamp = _sentinel_path(Path(out_path), format)
    try:
        return json.loads(stamp.read_text()) == json.loads(json.dumps(dataclasses.asdict(spec)))
    except (OSError, ValueError):
        return False
