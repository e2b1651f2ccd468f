// Pronunciation lexicon and its phoneme trie: plain C++, no Python.
//
// A lexicon is a list of (word, pronunciation) pairs over the 39 phonemes (class ids 1..39). A word may have
// several pronunciations (all kept); different words may share one (homophones: all kept, each word a separate
// hypothesis in the decoder). Duplicate (word, pronunciation) pairs are kept once.
//
// The trie: node 0 is the root (the start of a word); a node's children are the phonemes that may follow, stored
// as a 64-bit mask over class ids plus a CSR array sorted by class id, so child(node, s) is one popcount; a node
// where a pronunciation ends lists the words that end there (CSR, word ids ascending).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "words/common.hpp"

namespace fastdecoder {
namespace words {

struct LexiconParseOptions {
  std::vector<std::string> phonemes;  // the symbols of class ids 1..kNumPhonemes, in order (required)
  bool strip_stress = true;    // "AH0" -> "AH" (trailing digits of a phoneme are dropped)
  bool strip_variant = true;   // "read(2)" -> "read" (cmudict marks alternative pronunciations so)
  bool skip_invalid = false;   // false: a symbol outside the inventory throws (naming line, word, symbol);
                               // true: such pronunciations are skipped (the lenient cmudict default)
  bool comments = true;        // text from a '#' that starts a field is a comment (";;;" lines too)
};

class Lexicon {
 public:
  struct Node {
    uint64_t child_mask = 0;  // bit s set: a child for class id s
    int32_t child_begin = 0;  // children_[child_begin ...] sorted by class id
    int32_t word_begin = 0, word_end = 0;  // node_words_[word_begin, word_end): words ending here
    int32_t parent = -1;
    int32_t token = -1;  // the class id of the edge into this node (-1 at the root)
  };

  Lexicon() { build_trie(); }
  // Parses "WORD PH PH ..." lines (whitespace-separated, blank lines ignored). Throws std::invalid_argument
  // naming the line number, the word and the offending symbol. `skipped` (optional) receives the number of
  // pronunciations skipped under skip_invalid.
  static Lexicon from_text(std::string_view text, const LexiconParseOptions& opt, int64_t* skipped = nullptr);
  // From parallel arrays: pronunciation i is phones[offsets[i] .. offsets[i+1]) of word words[i]; class ids 1..39.
  static Lexicon from_entries(const std::vector<std::string>& words, const std::vector<int32_t>& phones,
                              const std::vector<int64_t>& offsets);

  // The lexicon restricted to the words with keep[word_id] true (word ids are renumbered in order).
  Lexicon subset(const std::vector<bool>& keep) const;

  int32_t num_words() const { return static_cast<int32_t>(words_.size()); }
  const std::string& word(int32_t id) const { return words_[id]; }
  const std::vector<std::string>& words() const { return words_; }
  int32_t find(std::string_view word) const;  // word id or -1
  int64_t num_pronunciations() const { return static_cast<int64_t>(pron_word_.size()); }
  int32_t pron_word(int64_t i) const { return pron_word_[i]; }
  std::vector<int32_t> pronunciation(int64_t i) const {
    return std::vector<int32_t>(phones_.begin() + pron_off_[i], phones_.begin() + pron_off_[i + 1]);
  }

  // Trie.
  int32_t num_nodes() const { return static_cast<int32_t>(nodes_.size()); }
  const Node& node(int32_t id) const { return nodes_[id]; }
  int32_t child(int32_t id, int32_t token) const {
    const Node& n = nodes_[id];
    const uint64_t bit = uint64_t{1} << token;
    if (!(n.child_mask & bit)) return -1;
    return children_[n.child_begin + popcount64(n.child_mask & (bit - 1))];
  }
  // The children of a node in class-id order (popcount64(child_mask) of them).
  const int32_t* children(int32_t id) const { return children_.data() + nodes_[id].child_begin; }
  const int32_t* node_words(int32_t id) const { return node_words_.data() + nodes_[id].word_begin; }
  int32_t node_num_words(int32_t id) const { return nodes_[id].word_end - nodes_[id].word_begin; }
  size_t memory_bytes() const;

 private:
  void add(std::string_view word, const std::vector<int32_t>& phones);
  void build_trie();

  std::vector<std::string> words_;
  std::unordered_map<std::string, int32_t> word_ids_;
  std::unordered_set<std::string> seen_;  // (word id, phones) of the pronunciations added (duplicates skipped)
  std::vector<int32_t> pron_word_;
  std::vector<int64_t> pron_off_{0};
  std::vector<uint8_t> phones_;

  std::vector<Node> nodes_;
  std::vector<int32_t> children_;
  std::vector<int32_t> node_words_;
};

}  // namespace words
}  // namespace fastdecoder
