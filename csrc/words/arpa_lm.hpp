// Back-off n-gram language model read from an ARPA file (any order): plain C++, no Python.
//
// Storage: every n-gram is an entry; entry 0 is the empty context (the root). One hash table maps
// (entry of w1..w(n-1), word wn) -> entry of w1..wn (a trie in a hash). An n-gram whose prefix is missing from the file
// gets a placeholder entry for the prefix (no probability, back-off 0), so every n-gram is reachable.
// Probabilities are kept as in the file (log10). The back-off query for p(w | h), h = the last order-1 words:
//   p(w | h) = p*(w | h) if the n-gram h w is in the file, else bo(h) * p(w | h minus its oldest word),
// with bo(h) = 1 (log10 0) where h is not in the file; the unigram of w ends the recursion.
// Unknown words: the file's <unk> unigram if present; otherwise the caller's unk_log10 (decoder default -100, as KenLM)
// and the history after such a word is empty.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "words/common.hpp"

namespace fastdecoder {
namespace words {

class ArpaLM {
 public:
  static constexpr int32_t kRoot = 0;

  // Parses an ARPA text. Throws std::invalid_argument "ARPA line N: ..." on malformed input.
  static ArpaLM from_text(std::string_view text);

  int order() const { return order_; }
  const std::vector<int64_t>& counts() const { return counts_; }  // n-grams per order 1..N, as in the file
  int32_t vocab_size() const { return static_cast<int32_t>(vocab_.size()); }
  const std::string& word(int32_t id) const { return vocab_[id]; }
  const std::vector<std::string>& vocabulary() const { return vocab_; }
  int32_t find(std::string_view w) const;  // word id or -1
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  int32_t unk() const { return unk_; }  // -1 if the file has no <unk>

  // Entry of (context entry, word), or -1.
  int32_t lookup(int32_t ctx, int32_t word) const {
    if (ctx < 0 || word < 0) return -1;
    const uint64_t key = pack_key(ctx, word);
    for (size_t i = hash_key(key) & mask_;; i = (i + 1) & mask_) {
      if (keys_[i] == kEmpty) return -1;
      if (keys_[i] == key) return vals_[i];
    }
  }
  bool is_ngram(int32_t e) const { return !std::isnan(prob_[e]); }  // false for placeholders and the root
  float entry_log10_prob(int32_t e) const { return prob_[e]; }
  float entry_log10_backoff(int32_t e) const { return backoff_[e]; }

  // log10 p(word | context) by back-off; context oldest first (only its last order-1 words matter).
  // word / context ids must be vocabulary ids (>= 0).
  double log10_prob(const int32_t* context, int n, int32_t word) const;

  size_t memory_bytes() const;

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  int32_t insert(int32_t ctx, int32_t word, float prob, float backoff, bool* fresh);
  void reserve(size_t entries);

  int order_ = 0;
  std::vector<int64_t> counts_;
  std::vector<std::string> vocab_;
  std::unordered_map<std::string, int32_t> ids_;
  int32_t bos_ = -1, eos_ = -1, unk_ = -1;
  std::vector<float> prob_, backoff_;
  std::vector<uint64_t> keys_;
  std::vector<int32_t> vals_;
  size_t mask_ = 0;
};

// Per-thread LM scoring for a decoder: interned history states and a (state, word) -> (log10 p, next state) cache.
// A state is the list of entries of the last k history words, k = 1..order-1 (-1 where that suffix is not in the
// model), which is all the back-off query needs.
class LmScorer {
 public:
  LmScorer(const ArpaLM& lm, double unk_log10);
  int32_t start_state() const { return start_; }  // after <s>
  // log10 p(word | state); word = -1 for a word the LM does not know (scored unk_log10, empty history after it)
  // unless the LM has <unk>, which the caller maps such words to.
  double score(int32_t state, int32_t word, int32_t* next);
  size_t memory_bytes() const;

 private:
  int32_t intern(const int32_t* nodes);

  const ArpaLM& lm_;
  int m_;  // order - 1 (at least 1)
  double unk_log10_;
  std::vector<int32_t> states_;  // m_ entries per state
  std::unordered_map<std::string, int32_t> state_ids_;
  FlatMap cache_;
  std::vector<std::pair<double, int32_t>> cached_;
  std::vector<int32_t> tmp_;
  int32_t start_ = 0, null_ = 0;
};

}  // namespace words
}  // namespace fastdecoder
