#include "words/lexicon.hpp"

#include <algorithm>
#include <stdexcept>

#include "words/common.hpp"

namespace fastdecoder {
namespace words {

namespace {

std::string inventory(const std::vector<std::string>& phonemes) {
  std::string s;
  for (size_t i = 0; i < phonemes.size(); ++i) s += (i ? " " : "") + phonemes[i];
  return s;
}

// Phoneme symbol -> class id 1..kNumPhonemes, or -1. Case-sensitive (ARPAbet is upper case); no stress digits.
int phoneme_id(std::string_view sym, const std::vector<std::string>& phonemes) {
  for (size_t i = 0; i < phonemes.size(); ++i)
    if (sym == phonemes[i]) return static_cast<int>(i) + 1;
  return -1;
}

}  // namespace

int32_t Lexicon::find(std::string_view word) const {
  auto it = word_ids_.find(std::string(word));
  return it == word_ids_.end() ? -1 : it->second;
}

void Lexicon::add(std::string_view word, const std::vector<int32_t>& phones) {
  auto [it, fresh] = word_ids_.emplace(std::string(word), static_cast<int32_t>(words_.size()));
  if (fresh) words_.emplace_back(word);
  std::string key(reinterpret_cast<const char*>(&it->second), sizeof(int32_t));
  for (int32_t p : phones) key.push_back(static_cast<char>(p));
  if (!seen_.insert(std::move(key)).second) return;  // the same pronunciation again (e.g. differing only in stress)
  pron_word_.push_back(it->second);
  for (int32_t p : phones) phones_.push_back(static_cast<uint8_t>(p));
  pron_off_.push_back(static_cast<int64_t>(phones_.size()));
}

Lexicon Lexicon::from_text(std::string_view text, const LexiconParseOptions& opt, int64_t* skipped) {
  if (opt.phonemes.size() != static_cast<size_t>(kNumPhonemes))
    throw std::invalid_argument("lexicon: the phoneme table must have " + std::to_string(kNumPhonemes) + " symbols");
  Lexicon lex;
  lex.nodes_.clear();
  int64_t n_skipped = 0;
  LineReader reader(text);
  std::string_view line;
  std::vector<std::string_view> fields;
  std::vector<int32_t> phones;
  std::string sym;
  while (reader.next(&line)) {
    if (opt.comments && trim(line).substr(0, 3) == ";;;") continue;
    split_fields(line, &fields);
    if (opt.comments)
      for (size_t i = 0; i < fields.size(); ++i)
        if (fields[i][0] == '#') {
          fields.resize(i);
          break;
        }
    if (fields.empty()) continue;
    std::string_view word = fields[0];
    if (opt.strip_variant && word.size() > 3 && word.back() == ')') {
      size_t open = word.rfind('(');
      if (open != std::string_view::npos && open > 0 && open + 2 < word.size()) {
        bool digits = true;
        for (size_t i = open + 1; i + 1 < word.size(); ++i) digits &= word[i] >= '0' && word[i] <= '9';
        if (digits) word = word.substr(0, open);
      }
    }
    if (!valid_utf8(word))
      throw std::invalid_argument("lexicon line " + std::to_string(reader.line_no()) + ": the word is not valid UTF-8");
    if (fields.size() < 2) {
      if (opt.skip_invalid) {
        ++n_skipped;
        continue;
      }
      throw std::invalid_argument("lexicon line " + std::to_string(reader.line_no()) + ": word " + quoted(word) +
                                  " has no pronunciation (expected 'WORD PH PH ...')");
    }
    phones.clear();
    bool ok = true;
    for (size_t i = 1; i < fields.size(); ++i) {
      std::string_view f = fields[i];
      if (opt.strip_stress)
        while (f.size() > 1 && f.back() >= '0' && f.back() <= '9') f.remove_suffix(1);
      const int id = phoneme_id(f, opt.phonemes);
      if (id < 0) {
        if (opt.skip_invalid) {
          ok = false;
          break;
        }
        throw std::invalid_argument("lexicon line " + std::to_string(reader.line_no()) + ": word " + quoted(word) +
                                    " has phoneme " + quoted(fields[i]) +
                                    " outside the inventory (ARPAbet without stress: " + inventory(opt.phonemes) + ")");
      }
      phones.push_back(id);
    }
    if (!ok) {
      ++n_skipped;
      continue;
    }
    lex.add(word, phones);
  }
  if (skipped) *skipped = n_skipped;
  lex.build_trie();
  return lex;
}

Lexicon Lexicon::from_entries(const std::vector<std::string>& words, const std::vector<int32_t>& phones,
                              const std::vector<int64_t>& offsets) {
  if (offsets.size() != words.size() + 1 || offsets.front() != 0 ||
      offsets.back() != static_cast<int64_t>(phones.size()))
    throw std::invalid_argument("lexicon entries: offsets do not match words and phones");
  Lexicon lex;
  lex.nodes_.clear();
  std::vector<int32_t> pron;
  for (size_t i = 0; i < words.size(); ++i) {
    if (offsets[i + 1] <= offsets[i])
      throw std::invalid_argument("lexicon entry " + std::to_string(i) + ": word " + quoted(words[i]) +
                                  " has an empty pronunciation");
    pron.assign(phones.begin() + offsets[i], phones.begin() + offsets[i + 1]);
    for (int32_t p : pron)
      if (p < 1 || p > kNumPhonemes)
        throw std::invalid_argument("lexicon entry " + std::to_string(i) + ": word " + quoted(words[i]) +
                                    " has class id " + std::to_string(p) + " outside the phonemes 1..39");
    lex.add(words[i], pron);
  }
  lex.build_trie();
  return lex;
}

Lexicon Lexicon::subset(const std::vector<bool>& keep) const {
  if (keep.size() != words_.size()) throw std::invalid_argument("subset: keep must have one entry per word");
  Lexicon lex;
  lex.nodes_.clear();
  std::vector<int32_t> pron;
  for (int64_t i = 0; i < num_pronunciations(); ++i) {
    if (!keep[pron_word_[i]]) continue;
    pron.assign(phones_.begin() + pron_off_[i], phones_.begin() + pron_off_[i + 1]);
    lex.add(words_[pron_word_[i]], pron);
  }
  lex.build_trie();
  return lex;
}

void Lexicon::build_trie() {
  // Build with child lists (first_child / next_sibling), then lay the children out as sorted CSR with a mask.
  struct Tmp {
    int32_t first_child, next_sibling, token, parent;
  };
  std::vector<Tmp> tmp;
  tmp.reserve(static_cast<size_t>(phones_.size() / 2 + 1));
  tmp.push_back(Tmp{-1, -1, -1, -1});
  std::vector<std::pair<int32_t, int32_t>> ends;  // (node, word)
  ends.reserve(pron_word_.size());
  for (int64_t i = 0; i < num_pronunciations(); ++i) {
    int32_t cur = 0;
    for (int64_t j = pron_off_[i]; j < pron_off_[i + 1]; ++j) {
      const int32_t tok = phones_[j];
      int32_t c = tmp[cur].first_child;
      while (c >= 0 && tmp[c].token != tok) c = tmp[c].next_sibling;
      if (c < 0) {
        c = static_cast<int32_t>(tmp.size());
        tmp.push_back(Tmp{-1, tmp[cur].first_child, tok, cur});
        tmp[cur].first_child = c;
      }
      cur = c;
    }
    ends.emplace_back(cur, pron_word_[i]);
  }
  std::unordered_set<std::string>().swap(seen_);  // only needed while adding
  std::sort(ends.begin(), ends.end());
  ends.erase(std::unique(ends.begin(), ends.end()), ends.end());

  const size_t n = tmp.size();
  nodes_.assign(n, Node{});
  children_.clear();
  children_.reserve(n);
  node_words_.clear();
  node_words_.reserve(ends.size());
  std::vector<std::pair<int32_t, int32_t>> kids;
  size_t e = 0;
  for (size_t i = 0; i < n; ++i) {
    Node& nd = nodes_[i];
    nd.parent = tmp[i].parent;
    nd.token = tmp[i].token;
    kids.clear();
    for (int32_t c = tmp[i].first_child; c >= 0; c = tmp[c].next_sibling) kids.emplace_back(tmp[c].token, c);
    std::sort(kids.begin(), kids.end());
    nd.child_begin = static_cast<int32_t>(children_.size());
    for (const auto& [tok, c] : kids) {
      nd.child_mask |= uint64_t{1} << tok;
      children_.push_back(c);
    }
    nd.word_begin = static_cast<int32_t>(node_words_.size());
    while (e < ends.size() && ends[e].first == static_cast<int32_t>(i)) node_words_.push_back(ends[e++].second);
    nd.word_end = static_cast<int32_t>(node_words_.size());
  }
}

size_t Lexicon::memory_bytes() const {
  size_t b = nodes_.size() * sizeof(Node) + children_.size() * 4 + node_words_.size() * 4 + phones_.size() +
             pron_word_.size() * 4 + pron_off_.size() * 8;
  for (const auto& w : words_) b += w.capacity() + sizeof(std::string) + 48;  // string + hash-map entry
  return b;
}

}  // namespace words
}  // namespace fastdecoder
