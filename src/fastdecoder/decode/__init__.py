"""Decoding: greedy, the native CTC prefix beam search, word decoding, ensembles, n-best rescoring, error rates.

Bad input (an argument out of range, a missing or malformed ARPA / lexicon file, a lexicon and LM that share no
word) raises :class:`fastdecoder.errors.UserError`, a ``ValueError`` whose message names the argument or the file
and line; the command line prints it as one ``error: ...`` line. Log-probabilities outside the decoders' input
policy (NaN, +inf) raise ``ValueError`` naming ``[b, t, v]``.
"""
from fastdecoder.decode.beam import beam_search, num_cpu_threads
from fastdecoder.decode.metrics import edit_distances, error_rate, greedy_decode, word_error_rate
from fastdecoder.decode.lm import ArpaLM, build_lm, load_arpa, normalize_text
from fastdecoder.decode.words import (
    Lexicon, WordDecoder, WordHypothesis, cmudict_lexicon, evaluate_words, greedy_words, lexicon_from_split, load_lexicon)
from fastdecoder.decode.ensemble import ensemble_log_probs
from fastdecoder.decode.rescore import NBestList, NeuralLM, RescoreWeights, decode_nbest, tune_weights

__all__ = ["beam_search", "num_cpu_threads", "greedy_decode", "edit_distances", "error_rate", "word_error_rate",
           "ArpaLM", "build_lm", "load_arpa", "normalize_text", "Lexicon", "WordDecoder", "WordHypothesis",
           "cmudict_lexicon", "evaluate_words", "greedy_words", "lexicon_from_split", "load_lexicon",
           "ensemble_log_probs", "NBestList", "NeuralLM", "RescoreWeights", "decode_nbest",
           "tune_weights"]
