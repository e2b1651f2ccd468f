"""One decoding session (one input stream): trial start/end, bins in, records out. No I/O: a transport (Redis, LSL)
parses its entries into these calls and writes the records it gets back.

Records are ``(kind, fields)`` with kind ``logits`` (one per output frame), ``output`` (trial start, per-hop
partials, trial end, final n-best), or ``error`` (a malformed entry or an aborted trial). Every record carries
``input_id`` (the input entry that completed it), ``trial`` and ``ts`` (uint64 ``time.monotonic_ns()`` bytes, as the
NEJM node writes its ``ts`` field).

Policy for bad input (``on_malformed``):
- ``skip`` (default): a malformed bin entry (wrong length, a dtype other than float32, NaN/Inf) is dropped and
  reported; the trial goes on without it;
- ``abort``: it is reported and the open trial is aborted (reported with its id); bins are ignored until the next
  trial start.
Always: a trial longer than ``max_trial_bins`` is aborted; a start while a trial is open aborts the open one; bins
outside a trial are ignored (counted in ``ignored_bins``); a start naming an unknown day is refused.
"""
from __future__ import annotations

import json
import time

import numpy as np

from fastdecoder.errors import UserError
from fastdecoder.phonemes import ids_to_text

__all__ = ["DecodeSession", "parse_samples", "MALFORMED_POLICIES"]

MALFORMED_POLICIES = ("skip", "abort")


def _ts() -> bytes:
    return np.uint64(time.monotonic_ns()).tobytes()


def parse_samples(raw, n_features: int, dtype: str | None = None) -> np.ndarray:
    """Bytes of float32 bins (n * n_features values, n >= 1) -> (n, C) array; ValueError naming the problem."""
    if dtype is not None and dtype not in ("float32", "f4", "<f4"):
        raise ValueError(f"dtype {dtype!r}: bins must be float32")
    if isinstance(raw, np.ndarray):
        arr = raw
        if arr.dtype != np.float32:
            raise ValueError(f"dtype {arr.dtype}: bins must be float32")
        arr = arr.reshape(-1)
    else:
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise ValueError(f"samples must be bytes of float32, got {type(raw).__name__}")
        if len(raw) == 0 or len(raw) % (4 * n_features):
            raise ValueError(f"samples has {len(raw)} bytes: expected a positive multiple of {4 * n_features} "
                             f"({n_features} float32 features per bin)")
        arr = np.frombuffer(raw, dtype="<f4").copy()  # writable (torch.from_numpy needs it)
    if arr.size == 0 or arr.size % n_features:
        raise ValueError(f"samples has {arr.size} values: expected a positive multiple of {n_features}")
    x = arr.reshape(-1, n_features)
    bad = ~np.isfinite(x)
    if bad.any():
        t, c = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"samples has a non-finite value ({x[t, c]}) at bin {t}, feature {c}")
    return x


class DecodeSession:
    """Drives one :class:`fastdecoder.stream.StreamingDecoder` from trial events.

    Args:
        decoder: the session's own StreamingDecoder.
        name: the input's name (stream), written into error records.
        normalizer: an optional :class:`fastdecoder.serve.normalize.RollingZScore` (updated at each trial end).
        on_malformed: ``skip`` | ``abort`` (module docstring).
        max_trial_bins: bins after which an open trial is aborted (bounds a session's memory).
    """

    def __init__(self, decoder, name: str, *, normalizer=None, on_malformed: str = "skip",
                 max_trial_bins: int = 30_000, nbest: int = 1):
        if on_malformed not in MALFORMED_POLICIES:
            raise UserError(f"on_malformed must be one of {MALFORMED_POLICIES}, got {on_malformed!r}")
        if normalizer is not None and normalizer.n_features != decoder.n_features:
            raise UserError(f"normalisation statistics have {normalizer.n_features} features, the model takes "
                            f"{decoder.n_features}")
        self.decoder, self.name, self.normalizer = decoder, name, normalizer
        self.on_malformed, self.max_trial_bins, self.nbest = on_malformed, int(max_trial_bins), int(nbest)
        self.trial: str | None = None        # id of the open trial
        self.day: int | None = None
        self._raw: list[np.ndarray] = []     # the open trial's raw bins (for the normalisation update)
        self._last_partial = None
        self.counts = {"trials": 0, "aborted": 0, "malformed": 0, "ignored_bins": 0, "frames": 0, "bins": 0}

    @property
    def n_features(self) -> int:
        return self.decoder.n_features

    # -- events -------------------------------------------------------------------------------------------------
    def start(self, input_id: str, trial: str, day) -> list:
        out = []
        if self.trial is not None:
            out += self.abort(input_id, f"a new trial ({trial}) started before this one ended")
        try:
            day = int(day)
            self.decoder.reset(day)
        except (TypeError, ValueError) as e:
            self.counts["malformed"] += 1
            return out + [self.error(input_id, f"trial {trial} refused: {e}", trial=trial, action="refused")]
        self.trial, self.day, self._raw, self._last_partial = str(trial), day, [], None
        self.counts["trials"] += 1
        return out + [("output", {"start": input_id, "trial": self.trial, "day": day, "input_id": input_id,
                                  "ts": _ts()})]

    def bins(self, input_id: str, raw, *, dtype: str | None = None, sync=None) -> list:
        """One input entry of bins (bytes of n x C float32, or an (n, C) float32 array)."""
        if self.trial is None:
            self.counts["ignored_bins"] += 1
            return []
        try:
            x = parse_samples(raw, self.n_features, dtype)
        except ValueError as e:
            self.counts["malformed"] += 1
            rec = [self.error(input_id, f"malformed bins: {e}",
                               action="skipped" if self.on_malformed == "skip" else "trial aborted")]
            if self.on_malformed == "abort":
                rec += self.abort(input_id, f"malformed bins ({e})")
            return rec
        if self.decoder.frontend.bins_received + x.shape[0] > self.max_trial_bins:
            return self.abort(input_id, f"the trial exceeds {self.max_trial_bins} bins without an end")
        if self.normalizer is not None:
            self._raw.append(x.copy())
            x = self.normalizer(x)
        try:
            part = self.decoder.push(x)
        except (UserError, RuntimeError) as e:
            return self.abort(input_id, f"decoder error: {e}")
        self.counts["bins"] += x.shape[0]
        return self._frames(input_id, sync) + self._partial(input_id, part)

    def end(self, input_id: str) -> list:
        if self.trial is None:
            return []
        try:
            final = self.decoder.finish(self.nbest)
        except (UserError, RuntimeError) as e:
            return self.abort(input_id, f"decoder error: {e}")
        out = self._frames(input_id, None)
        trial = self.trial
        ts = _ts()
        out.append(("output", {"end": input_id, "trial": trial, "input_id": input_id, "bins": final.bins,
                               "frames": final.frames, "ts": ts}))
        nbest = [{"phonemes": ids_to_text(toks), "score": float(score)} for toks, score in final.hypotheses]
        fields = {"final_decoded_sentence": final.text if final.words is not None else ids_to_text(final.phonemes),
                  "phonemes": ids_to_text(final.phonemes), "phoneme_ids": json.dumps([int(i) for i in final.phonemes]),
                  "trial": trial, "input_id": input_id, "ts": ts}
        if final.words is not None:
            fields["words"] = final.text
            fields["nbest"] = json.dumps([{"words": " ".join(h[0]), "score": float(h[1])} for h in final.words])
        else:
            fields["nbest"] = json.dumps(nbest)
        out.append(("output", fields))
        if self.normalizer is not None and self._raw:
            self.normalizer.update(np.concatenate(self._raw))
        self._close()
        return out

    def abort(self, input_id: str | None, reason: str) -> list:
        """Close the open trial without a result (recorded on the error stream with its id and the reason)."""
        if self.trial is None:
            return []
        rec = self.error(input_id, f"trial {self.trial} aborted: {reason}", action="trial aborted")
        self.counts["aborted"] += 1
        self._close()
        return [rec]

    # -- helpers ------------------------------------------------------------------------------------------------
    def _close(self) -> None:
        self.trial, self.day, self._raw, self._last_partial = None, None, [], None
        # a closed decoder holds no trial data; the next start resets it

    def error(self, input_id, reason: str, *, action: str, trial: str | None = None) -> tuple:
        """An error record (a transport reports its own parse problems through it too)."""
        fields = {"input": self.name, "input_id": input_id or "", "trial": trial or self.trial or "",
                  "reason": reason, "action": action, "ts": _ts()}
        return ("error", fields)

    def _frames(self, input_id: str, sync) -> list:
        lp = self.decoder.take_log_probs()
        if not len(lp):
            return []
        self.counts["frames"] += len(lp)
        frame0 = self.decoder.beam.frames - len(lp)
        ts = _ts()
        out = []
        for k in range(len(lp)):
            f = {"logits": np.ascontiguousarray(lp[k], np.float32).tobytes(), "frame": frame0 + k,
                 "trial": self.trial, "input_id": input_id, "ts": ts}
            if sync is not None:
                f["sync"] = sync
            out.append(("logits", f))
        return out

    def _partial(self, input_id: str, part) -> list:
        key = (len(part.phonemes), part.stable, tuple(part.phonemes), part.words_stable,
               tuple(part.words or ()))
        if key == self._last_partial:
            return []
        self._last_partial = key
        words = part.words or []
        fields = {"partial_decoded_sentence": " ".join(words) if part.words is not None else ids_to_text(part.phonemes),
                  "phonemes": ids_to_text(part.phonemes), "phonemes_final": part.stable,
                  "frames": part.frames, "bins": part.bins, "trial": self.trial, "input_id": input_id, "ts": _ts()}
        if part.words is not None:
            fields["words"] = " ".join(words)
            fields["words_final"] = part.words_stable
        return [("output", fields)]
