// Lexicon-constrained CTC prefix beam search with an n-gram LM at word ends: plain C++, no Python.
//
// Input: per sentence (T, 41) natural-log phoneme posteriors (0 = blank, 1..39 phonemes, 40 = SIL).
// A hypothesis is (word history h, lexicon trie node n): the completed words plus the phonemes of the current
// word so far. Its collapsed label sequence is pron(w1) SIL pron(w2) SIL ... SIL (phonemes to n), so the key
// (h, n) identifies the CTC prefix except that a word with several pronunciations reaches (h + w, root) from each of
// them: those alignments are summed (the probability of the word sequence, not of one pronunciation).
// pb / pnb: log-mass of the alignments that end in blank / in the last label.
// With lp'[blank] = lp[blank] - blank_penalty:
//   stay:      pb'(h,n)    += score(h,n) + lp'[blank]          pnb'(h,n) += pnb(h,n) + lp[last]   (repeat collapses)
//   phoneme s: pnb'(h,c)   += (s == last ? pb : score)(h,n) + lp[s]   for each trie child c = child(n, s)
//   SIL:       pnb'(h+w,0) += score(h,n) + lp[SIL]             for each word w ending at n (homophones: separate
//                                                                hypotheses, each with its own LM score)
// where score = lse(pb, pnb) is the acoustic (CTC) score and a prefix of zero mass is no candidate. SIL is allowed only
// at a word end (after SIL the hypothesis is at the root, where a repeated SIL collapses into the same one).
// Ranking score = acoustic + lm_weight * LM(h) + word_bonus * |h| (+ lm_weight * lookahead(n), optional), with
// LM(h) = sum of ln p(w_i | w_<i) (ARPA log10 * ln 10), the first word conditioned on <s>. The beam keeps the
// `beam_width` best by ranking score (ties: smaller (history id, node id), deterministic).
// Lookahead (option, on by default): lookahead(n) = max over the words below trie node n of their unigram
// ln-probability, 0 at the root; it is replaced by the real LM score when the word ends. It never increases down
// the trie, so
// rank(h, child) <= rank(h, n) + lp[s] holds with or without it: new prefixes are tried per hypothesis by descending
// lp and the loop stops below the k-th best ranking score (lossless: the result equals the unpruned search).
// Optional lossy cut `token_min_logprob`: labels below it propose no new hypothesis (existing ones keep their mass).
// Sentence end: hypotheses at the root (ended with SIL, or nothing decoded) and hypotheses at a word end (the last
// word complete without SIL, once per homophone) are final; the LM's </s> is added; finals with the same word sequence
// are merged (log-sum-exp of their acoustic scores); partial words are dropped. If no hypothesis is final, the best
// one's completed words are returned with its ranking score.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "words/arpa_lm.hpp"
#include "words/lexicon.hpp"

namespace fastdecoder {
namespace words {

struct WordDecoderOptions {
  int beam_width = 64;
  int nbest = 1;
  double lm_weight = 0.5;
  double word_bonus = 0.0;
  double blank_penalty = 0.0;
  double token_min_logprob = -std::numeric_limits<double>::infinity();  // -inf = off (exact)
  double unk_log10 = -100.0;  // log10 p of a word the LM does not know, when the LM has no <unk>
  bool lm_lookahead = true;
};

struct WordHypothesis {
  std::vector<int32_t> words;  // lexicon word ids
  double score = 0.0;          // acoustic + lm_weight * lm + word_bonus * |words|
  double acoustic = 0.0;       // CTC log-mass (blank penalty included) of the alignments the beam kept
  double lm = 0.0;             // natural-log LM probability of the sentence incl. </s> (0 without LM)
};

namespace detail {
class Searcher;  // the search state of one sentence (word_decoder.cpp)
}

class WordDecoder {
 public:
  // lm may be null (lexicon-constrained decoding, no LM). lm_ids[w]: the LM word id of lexicon word w, or -1 for a
  // word the LM does not know (scored as the LM's <unk> if it has one, else unk_log10).
  WordDecoder(std::shared_ptr<const Lexicon> lexicon, std::shared_ptr<const ArpaLM> lm, std::vector<int32_t> lm_ids,
              const WordDecoderOptions& opt);

  // A batch (B, T, V=41) with element strides; lengths (B,) in [0, T]; num_threads 0 = all cores.
  // Throws std::invalid_argument naming [b, t, v] for a NaN or +inf in a used frame (-inf = probability 0 is fine).
  // workspace_bytes (optional): the largest per-thread workspace used, in bytes.
  template <typename T>
  std::vector<std::vector<WordHypothesis>> decode_batch(const T* log_probs, int64_t batch, int64_t frames,
                                                        int64_t vocab, int64_t batch_stride, int64_t row_stride,
                                                        int64_t col_stride, const int64_t* lengths, int num_threads,
                                                        size_t* workspace_bytes = nullptr) const;

  const WordDecoderOptions& options() const { return opt_; }
  const Lexicon& lexicon() const { return *lex_; }
  const ArpaLM* lm() const { return lm_.get(); }
  const std::vector<int32_t>& lm_ids() const { return lm_ids_; }
  const std::vector<double>& lookahead() const { return lookahead_; }

 private:
  std::shared_ptr<const Lexicon> lex_;
  std::shared_ptr<const ArpaLM> lm_;
  std::vector<int32_t> lm_ids_;
  WordDecoderOptions opt_;
  std::vector<double> lookahead_;  // per trie node: lm_weight * max unigram ln p below it (0 when off or no LM)
};

// A partial result: the completed words of the best hypothesis, of which words[0:stable] are shared by every
// hypothesis in the beam. Every next-frame hypothesis keeps its parent's word history or extends it by one word, and
// the sentence-end hypotheses are built from the beam's histories, so that common prefix can no longer change.
struct WordPartial {
  std::vector<int32_t> words;
  int32_t stable = 0;
  double score = 0.0;  // the best hypothesis' ranking score
};

// One sentence decoded frame by frame; WordDecoder::decode_batch runs the same search over all frames at once.
class WordStream {
 public:
  explicit WordStream(std::shared_ptr<const WordDecoder> decoder);
  ~WordStream();
  void reset();  // start a new sentence
  // Advance by `frames` frames of (frames, 41) natural-log posteriors; a NaN or +inf throws std::invalid_argument
  // naming [t, v] before any frame is used (the state is unchanged).
  template <typename T>
  void advance(const T* log_probs, int64_t frames, int64_t row_stride, int64_t col_stride);
  WordPartial partial() const;
  // The sentence-end hypotheses of the frames so far (up to nbest, best first), as decode_batch returns them.
  // Only call once per sentence: it adds the sentence-end word histories to the state.
  std::vector<WordHypothesis> finish(int nbest);
  int64_t frames() const { return frames_; }
  const WordDecoder& decoder() const { return *decoder_; }

 private:
  std::shared_ptr<const WordDecoder> decoder_;
  std::unique_ptr<detail::Searcher> search_;
  int64_t frames_ = 0;
};

}  // namespace words
}  // namespace fastdecoder
