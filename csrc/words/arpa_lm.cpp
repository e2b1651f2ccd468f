#include "words/arpa_lm.hpp"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <stdexcept>

namespace fastdecoder {
namespace words {

namespace {

[[noreturn]] void fail(int64_t line, const std::string& msg) {
  throw std::invalid_argument("ARPA line " + std::to_string(line) + ": " + msg);
}

// Locale-independent float parsing of a whole field.
bool parse_double(std::string_view s, double* out) {
  if (s.empty()) return false;
#if defined(__cpp_lib_to_chars) && __cpp_lib_to_chars >= 201611L
  const char* b = s.data();
  const char* e = s.data() + s.size();
  if (*b == '+') ++b;
  auto res = std::from_chars(b, e, *out);
  if (res.ec == std::errc() && res.ptr == e) return true;
  if (res.ec == std::errc::result_out_of_range) {  // underflow to 0 / overflow: let strtod decide below
  } else {
    return false;
  }
#endif
  char buf[128];
  if (s.size() >= sizeof(buf)) return false;
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = 0;
  char* end = nullptr;
  *out = std::strtod(buf, &end);
  return end == buf + s.size();
}

bool parse_int(std::string_view s, int64_t* out) {
  if (s.empty()) return false;
  auto res = std::from_chars(s.data(), s.data() + s.size(), *out);
  return res.ec == std::errc() && res.ptr == s.data() + s.size();
}

bool is_blank(std::string_view line) { return trim(line).empty(); }

}  // namespace

int32_t ArpaLM::find(std::string_view w) const {
  auto it = ids_.find(std::string(w));
  return it == ids_.end() ? -1 : it->second;
}

void ArpaLM::reserve(size_t entries) {
  size_t cap = 16;
  while (cap < entries + entries / 2 + 1) cap <<= 1;
  keys_.assign(cap, kEmpty);
  vals_.assign(cap, -1);
  mask_ = cap - 1;
}

int32_t ArpaLM::insert(int32_t ctx, int32_t word, float prob, float backoff, bool* fresh) {
  if (2 * (prob_.size() + 1) > keys_.size()) {  // grow (placeholders beyond the declared counts)
    std::vector<uint64_t> keys;
    std::vector<int32_t> vals;
    keys.swap(keys_);
    vals.swap(vals_);
    reserve(keys.size());
    for (size_t i = 0; i < keys.size(); ++i)
      if (keys[i] != kEmpty) {
        size_t j = hash_key(keys[i]) & mask_;
        while (keys_[j] != kEmpty) j = (j + 1) & mask_;
        keys_[j] = keys[i];
        vals_[j] = vals[i];
      }
  }
  const uint64_t key = pack_key(ctx, word);
  size_t i = hash_key(key) & mask_;
  for (; keys_[i] != kEmpty; i = (i + 1) & mask_)
    if (keys_[i] == key) {
      *fresh = false;
      return vals_[i];
    }
  const int32_t id = static_cast<int32_t>(prob_.size());
  keys_[i] = key;
  vals_[i] = id;
  prob_.push_back(prob);
  backoff_.push_back(backoff);
  *fresh = true;
  return id;
}

ArpaLM ArpaLM::from_text(std::string_view text) {
  ArpaLM lm;
  LineReader r(text);
  std::string_view line;
  bool got = false;
  // Anything before \data\ is a preamble (some tools write comments there).
  while ((got = r.next(&line)))
    if (trim(line) == "\\data\\") break;
  if (!got) throw std::invalid_argument("ARPA: no '\\data\\' header found (is this an ARPA language model file?)");

  // Header: "ngram N=COUNT" lines, orders 1, 2, ... in sequence.
  int64_t header_line = r.line_no();
  while ((got = r.next(&line))) {
    std::string_view t = trim(line);
    if (t.empty()) {
      if (lm.counts_.empty()) continue;
      break;
    }
    if (t[0] == '\\') {
      if (lm.counts_.empty()) fail(r.line_no(), "expected 'ngram N=COUNT' lines after '\\data\\', got " + quoted(t));
      break;
    }
    if (t.substr(0, 5) != "ngram" || t.size() < 6 || !is_space(t[5]))
      fail(r.line_no(), "expected 'ngram N=COUNT', got " + quoted(t));
    std::string_view spec = trim(t.substr(5));
    const size_t eq = spec.find('=');
    int64_t n = 0, c = 0;
    if (eq == std::string_view::npos || !parse_int(trim(spec.substr(0, eq)), &n) ||
        !parse_int(trim(spec.substr(eq + 1)), &c) || c < 0)
      fail(r.line_no(), "expected 'ngram N=COUNT', got " + quoted(t));
    if (n != static_cast<int64_t>(lm.counts_.size()) + 1)
      fail(r.line_no(), "ngram orders must be listed 1, 2, 3, ... (expected " + std::to_string(lm.counts_.size() + 1) +
                            ", got " + std::to_string(n) + ")");
    lm.counts_.push_back(c);
    header_line = r.line_no();
  }
  if (lm.counts_.empty()) fail(header_line, "no 'ngram N=COUNT' lines after '\\data\\'");
  lm.order_ = static_cast<int>(lm.counts_.size());
  // Every n-gram takes a line: declared counts beyond the file's lines are refused before anything is allocated.
  const int64_t lines = static_cast<int64_t>(std::count(text.begin(), text.end(), '\n')) + 1;
  for (int n = 1; n <= lm.order_; ++n)
    if (lm.counts_[n - 1] > lines)
      fail(header_line, "the header declares " + std::to_string(lm.counts_[n - 1]) + " " + std::to_string(n) +
                            "-grams but the file has only " + std::to_string(lines) + " lines (truncated file?)");
  if (lm.counts_[0] < 1) fail(header_line, "the model declares no 1-grams");
  if (lm.counts_[0] >= (int64_t{1} << 31)) fail(header_line, "too many 1-grams");
  int64_t total = 0;
  for (int64_t c : lm.counts_) total += c;
  if (total >= (int64_t{1} << 31) - 2) fail(header_line, "too many n-grams for this loader (2^31)");
  lm.reserve(static_cast<size_t>(total + 1));
  lm.prob_.reserve(static_cast<size_t>(total + 1));
  lm.backoff_.reserve(static_cast<size_t>(total + 1));
  lm.prob_.push_back(std::numeric_limits<float>::quiet_NaN());  // entry 0: the root (empty context)
  lm.backoff_.push_back(0.0f);
  lm.vocab_.reserve(static_cast<size_t>(lm.counts_[0]));

  std::vector<std::string_view> fields;
  std::vector<int32_t> ids;
  // `line` holds the line that ended the header (a section header or a blank line).
  for (int n = 1; n <= lm.order_; ++n) {
    while (got && is_blank(line)) got = r.next(&line);
    const std::string want = "\\" + std::to_string(n) + "-grams:";
    if (!got) throw std::invalid_argument("ARPA: the file ends before the '" + want + "' section");
    if (trim(line) != want) fail(r.line_no(), "expected '" + want + "', got " + quoted(trim(line)));
    int64_t seen = 0;
    while ((got = r.next(&line))) {
      if (is_blank(line)) break;
      if (trim(line)[0] == '\\') break;
      split_fields(line, &fields);
      const size_t nf = fields.size();
      if (nf != static_cast<size_t>(n) + 1 && !(n < lm.order_ && nf == static_cast<size_t>(n) + 2))
        fail(r.line_no(), "a " + std::to_string(n) + "-gram line needs " +
                              (n < lm.order_ ? std::to_string(n + 1) + " or " + std::to_string(n + 2)
                                             : std::to_string(n + 1)) +
                              " fields (log10 prob, " + std::to_string(n) + " word(s)" +
                              (n < lm.order_ ? ", optional back-off" : "") + "), got " + std::to_string(nf) + ": " +
                              quoted(trim(line)));
      double prob = 0.0, bo = 0.0;
      if (!parse_double(fields[0], &prob) || std::isnan(prob))
        fail(r.line_no(), "bad log10 probability " + quoted(fields[0]));
      if (prob > 0.0) fail(r.line_no(), "positive log10 probability " + quoted(fields[0]) + " (a probability > 1)");
      if (nf == static_cast<size_t>(n) + 2 && (!parse_double(fields[nf - 1], &bo) || !std::isfinite(bo)))
        fail(r.line_no(), "bad log10 back-off weight " + quoted(fields[nf - 1]));
      ids.clear();
      if (n == 1) {
        if (!valid_utf8(fields[1])) fail(r.line_no(), "the word is not valid UTF-8");
        const std::string w(fields[1]);
        const int32_t id = static_cast<int32_t>(lm.vocab_.size());
        if (!lm.ids_.emplace(w, id).second) fail(r.line_no(), "duplicate 1-gram " + quoted(w));
        lm.vocab_.push_back(w);
        ids.push_back(id);
      } else {
        for (int i = 1; i <= n; ++i) {
          auto it = lm.ids_.find(std::string(fields[i]));
          if (it == lm.ids_.end())
            fail(r.line_no(), "word " + quoted(fields[i]) + " of this " + std::to_string(n) +
                                  "-gram is not in the 1-grams");
          ids.push_back(it->second);
        }
      }
      int32_t ctx = kRoot;
      bool fresh = false;
      for (int i = 0; i + 1 < n; ++i)  // walk (and if need be create) the prefix
        ctx = lm.insert(ctx, ids[i], std::numeric_limits<float>::quiet_NaN(), 0.0f, &fresh);
      const int32_t e = lm.insert(ctx, ids[n - 1], static_cast<float>(prob), static_cast<float>(bo), &fresh);
      if (!fresh) {
        if (lm.is_ngram(e)) fail(r.line_no(), "duplicate " + std::to_string(n) + "-gram " + quoted(trim(line)));
        lm.prob_[e] = static_cast<float>(prob);  // a placeholder created for an earlier n-gram's prefix
        lm.backoff_[e] = static_cast<float>(bo);
      }
      ++seen;
    }
    if (seen != lm.counts_[n - 1])
      fail(r.line_no(), "the \\" + std::to_string(n) + "-grams: section has " + std::to_string(seen) +
                            " entries but the header declares " + std::to_string(lm.counts_[n - 1]));
  }
  while (got && is_blank(line)) got = r.next(&line);
  if (!got) throw std::invalid_argument("ARPA: the file ends without '\\end\\' (truncated?)");
  if (trim(line) != "\\end\\") fail(r.line_no(), "expected '\\end\\', got " + quoted(trim(line)));
  lm.bos_ = lm.find("<s>");
  lm.eos_ = lm.find("</s>");
  lm.unk_ = lm.find("<unk>");
  return lm;
}

double ArpaLM::log10_prob(const int32_t* context, int n, int32_t word) const {
  const int m = std::min(n, order_ - 1);
  double acc = 0.0;
  for (int k = m; k >= 0; --k) {  // longest history suffix first
    int32_t ctx = kRoot;
    for (int i = n - k; i < n && ctx >= 0; ++i) ctx = lookup(ctx, context[i]);
    if (ctx < 0) continue;  // history not in the model: back-off weight 1
    const int32_t e = lookup(ctx, word);
    if (e >= 0 && is_ngram(e)) return acc + prob_[e];
    acc += backoff_[ctx];
  }
  return acc + std::numeric_limits<double>::quiet_NaN();  // word has no 1-gram (only for a placeholder)
}

size_t ArpaLM::memory_bytes() const {
  size_t b = keys_.size() * 8 + vals_.size() * 4 + prob_.size() * 8;
  for (const auto& w : vocab_) b += w.capacity() + sizeof(std::string) + 48;
  return b;
}

// ------------------------------------------------------------------------------------------------- LmScorer

LmScorer::LmScorer(const ArpaLM& lm, double unk_log10)
    : lm_(lm), m_(std::max(1, lm.order() - 1)), unk_log10_(unk_log10) {
  tmp_.assign(static_cast<size_t>(m_), -1);
  null_ = intern(tmp_.data());
  if (lm.bos() >= 0) {
    tmp_[0] = lm.lookup(ArpaLM::kRoot, lm.bos());
    start_ = intern(tmp_.data());
  } else {
    start_ = null_;
  }
}

int32_t LmScorer::intern(const int32_t* nodes) {
  std::string key(reinterpret_cast<const char*>(nodes), sizeof(int32_t) * static_cast<size_t>(m_));
  auto [it, fresh] = state_ids_.emplace(std::move(key), static_cast<int32_t>(states_.size() / m_));
  if (fresh) states_.insert(states_.end(), nodes, nodes + m_);
  return it->second;
}

double LmScorer::score(int32_t state, int32_t word, int32_t* next) {
  bool fresh = false;
  int32_t& slot = cache_.insert(pack_key(state, word + 1), static_cast<int32_t>(cached_.size()), &fresh);
  if (!fresh) {
    const auto& c = cached_[slot];
    *next = c.second;
    return c.first;
  }
  double result;
  int32_t nxt;
  if (word < 0) {
    result = unk_log10_;
    nxt = null_;
  } else {
    const int32_t* nodes = &states_[static_cast<size_t>(state) * m_];
    double acc = 0.0, res = std::numeric_limits<double>::quiet_NaN();
    for (int k = m_; k >= 0; --k) {
      const int32_t ctx = k == 0 ? ArpaLM::kRoot : nodes[k - 1];
      if (ctx < 0) continue;
      const int32_t e = lm_.lookup(ctx, word);
      if (e >= 0 && lm_.is_ngram(e)) {
        res = acc + lm_.entry_log10_prob(e);
        break;
      }
      acc += lm_.entry_log10_backoff(ctx);
    }
    result = res;
    // The next history: suffix j ending in `word` = (suffix j-1 of this history) + word.
    tmp_[0] = lm_.lookup(ArpaLM::kRoot, word);
    for (int j = 2; j <= m_; ++j) tmp_[j - 1] = nodes[j - 2] >= 0 ? lm_.lookup(nodes[j - 2], word) : -1;
    nxt = intern(tmp_.data());
  }
  cached_.emplace_back(result, nxt);
  *next = nxt;
  return result;
}

size_t LmScorer::memory_bytes() const {
  return states_.size() * 4 + state_ids_.size() * (48 + 4 * m_) + cache_.memory_bytes() + cached_.size() * 8;
}

}  // namespace words
}  // namespace fastdecoder
