// Small shared pieces of the word decoder: phoneme inventory, flat hash maps, text scanning (log-sum-exp and
// the log-probability policy: log_math.hpp).
// Plain C++17, no Python.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>
#include <vector>
#ifdef _MSC_VER
#include <intrin.h>
#endif

#include "log_math.hpp"

namespace fastdecoder {
namespace words {

// The 41-class layout of both reference datasets: 0 = CTC blank, 1..39 = ARPAbet phonemes without stress, 40 = SIL. The phoneme
// symbols themselves are not repeated here: the caller passes them (the binding reads fastdecoder.phonemes.PHONEMES,
// the one table, and checks its layout against these constants at import).
constexpr int kBlank = 0;
constexpr int kSil = 40;
constexpr int kNumClasses = 41;
constexpr int kNumPhonemes = 39;

// A piece of input text in quotes for error messages, cut after `max_chars`.
inline std::string quoted(std::string_view s, size_t max_chars = 80) {
  std::string out = "'";
  out.append(s.substr(0, max_chars));
  if (s.size() > max_chars) out += "...";
  return out + "'";
}

inline int popcount64(uint64_t x) {
#ifdef _MSC_VER
  return static_cast<int>(__popcnt64(x));
#else
  return __builtin_popcountll(x);
#endif
}

inline int ctz64(uint64_t x) {  // x != 0
#ifdef _MSC_VER
  unsigned long i;
  _BitScanForward64(&i, x);
  return static_cast<int>(i);
#else
  return __builtin_ctzll(x);
#endif
}

using fastdecoder::kNegInf;
using fastdecoder::lse;
constexpr double kLn10 = 2.302585092994045684;

inline uint64_t pack_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

inline size_t hash_key(uint64_t k) {  // a strong 64-bit mix (splitmix64 finaliser)
  k ^= k >> 30;
  k *= 0xbf58476d1ce4e5b9ULL;
  k ^= k >> 27;
  k *= 0x94d049bb133111ebULL;
  k ^= k >> 31;
  return static_cast<size_t>(k);
}

// uint64 key -> int32 value; open addressing with linear probing; clear() is O(1) (generation stamps), so one
// map can be reused every frame. Grows at 50 % load.
class FlatMap {
 public:
  explicit FlatMap(size_t capacity = 64) { reset_capacity(capacity); }

  void clear() {
    if (++gen_ == 0) {  // stamps wrapped: really clear
      std::fill(gens_.begin(), gens_.end(), 0u);
      gen_ = 1;
    }
    size_ = 0;
  }
  size_t size() const { return size_; }

  // The value stored for key, or -1.
  int32_t find(uint64_t key) const {
    for (size_t i = hash_key(key) & mask_;; i = (i + 1) & mask_) {
      if (gens_[i] != gen_) return -1;
      if (keys_[i] == key) return vals_[i];
    }
  }
  // The value slot for key; inserts `value` if the key is new (*inserted = true).
  int32_t& insert(uint64_t key, int32_t value, bool* inserted) {
    if (2 * (size_ + 1) > keys_.size()) grow();
    size_t i = hash_key(key) & mask_;
    for (;; i = (i + 1) & mask_) {
      if (gens_[i] != gen_) break;
      if (keys_[i] == key) {
        *inserted = false;
        return vals_[i];
      }
    }
    gens_[i] = gen_;
    keys_[i] = key;
    vals_[i] = value;
    ++size_;
    *inserted = true;
    return vals_[i];
  }
  size_t memory_bytes() const { return keys_.size() * (sizeof(uint64_t) + sizeof(int32_t) + sizeof(uint32_t)); }

 private:
  void reset_capacity(size_t capacity) {
    size_t cap = 16;
    while (cap < capacity) cap <<= 1;
    keys_.assign(cap, 0);
    vals_.assign(cap, 0);
    gens_.assign(cap, 0u);
    mask_ = cap - 1;
    gen_ = 1;
    size_ = 0;
  }
  void grow() {
    std::vector<uint64_t> keys;
    std::vector<int32_t> vals;
    keys.reserve(size_);
    vals.reserve(size_);
    for (size_t i = 0; i < keys_.size(); ++i)
      if (gens_[i] == gen_) keys.push_back(keys_[i]), vals.push_back(vals_[i]);
    reset_capacity(keys_.size() * 2);
    bool ins;
    for (size_t i = 0; i < keys.size(); ++i) insert(keys[i], vals[i], &ins);
  }

  std::vector<uint64_t> keys_;
  std::vector<int32_t> vals_;
  std::vector<uint32_t> gens_;
  uint32_t gen_ = 1;
  size_t size_ = 0, mask_ = 0;
};

// Line-by-line scanning of a text buffer (\n or \r\n endings); line numbers from 1.
class LineReader {
 public:
  explicit LineReader(std::string_view text) : text_(text) {}
  bool next(std::string_view* line) {
    if (pos_ >= text_.size()) return false;
    size_t end = text_.find('\n', pos_);
    if (end == std::string_view::npos) end = text_.size();
    std::string_view l = text_.substr(pos_, end - pos_);
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    pos_ = end + 1;
    ++line_no_;
    *line = l;
    return true;
  }
  int64_t line_no() const { return line_no_; }

 private:
  std::string_view text_;
  size_t pos_ = 0;
  int64_t line_no_ = 0;
};

inline bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

// Whitespace-separated fields of a line (appended to out, which is cleared first).
inline void split_fields(std::string_view line, std::vector<std::string_view>* out) {
  out->clear();
  size_t i = 0, n = line.size();
  while (i < n) {
    while (i < n && is_space(line[i])) ++i;
    if (i >= n) break;
    size_t j = i;
    while (j < n && !is_space(line[j])) ++j;
    out->push_back(line.substr(i, j - i));
    i = j;
  }
}

// Whether s is well-formed UTF-8 (no overlong forms, surrogates or code points above U+10FFFF).
inline bool valid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07;
    else return false;
    if (i + len > n) return false;
    for (int k = 1; k < len; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
      return false;
    i += static_cast<size_t>(len);
  }
  return true;
}

inline std::string_view trim(std::string_view s) {
  size_t a = 0, b = s.size();
  while (a < b && is_space(s[a])) ++a;
  while (b > a && is_space(s[b - 1])) --b;
  return s.substr(a, b - a);
}

}  // namespace words
}  // namespace fastdecoder
