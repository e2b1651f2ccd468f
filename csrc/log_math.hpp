// Log-space arithmetic and the accepted range of log-probabilities, shared by every decoder: plain C++, no Python.
//
// Input policy (all decoders): a log-probability is -inf (probability 0: a path through it has zero mass and is
// no candidate) or a finite number with |x| <= kMaxAbsLogProb. NaN, +inf and larger magnitudes are refused (named
// [b, t, v]). The bound keeps every sum of up to 2^31 frames far inside the double range, so scores never overflow
// to +inf (where inf - inf would turn a log-sum-exp into NaN); every finite float32 value lies inside it.
#pragma once
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

namespace fastdecoder {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();
constexpr double kMaxAbsLogProb = 1e100;

// log(exp(a) + exp(b)); -inf safe.
inline double lse(double a, double b) {
  if (a < b) std::swap(a, b);
  if (b == kNegInf) return a;
  return a + std::log1p(std::exp(b - a));
}

template <typename T>
inline bool valid_log_prob(T x) {
  const double v = static_cast<double>(x);
  return (std::fabs(v) <= kMaxAbsLogProb) | (v == kNegInf);  // false for NaN; branch-free (vectorises)
}

// First value of one sentence's used frames outside the accepted range: true and (t, v) if any.
template <typename T>
bool find_invalid_log_prob(const T* x, int64_t frames, int64_t vocab, int64_t row_stride, int64_t col_stride,
                           int64_t* t_out, int64_t* v_out) {
  for (int64_t t = 0; t < frames; ++t) {
    const T* r = x + t * row_stride;
    bool ok = true;
    for (int64_t v = 0; v < vocab; ++v) ok &= valid_log_prob(r[v * col_stride]);
    if (ok) continue;
    for (int64_t v = 0; v < vocab; ++v)
      if (!valid_log_prob(r[v * col_stride])) {
        *t_out = t, *v_out = v;
        return true;
      }
  }
  return false;
}

// The error message for an invalid value at [b, t, v].
inline std::string invalid_log_prob_message(int64_t b, int64_t t, int64_t v, double value) {
  char num[32];
  std::snprintf(num, sizeof(num), "%.6g", value);
  return "log_probs[" + std::to_string(b) + ", " + std::to_string(t) + ", " + std::to_string(v) + "] = " +
         std::string(num) + " is not a log-probability: expected -inf or a finite value with |x| <= 1e100 "
         "(NaN and +inf are refused)";
}

// Throws std::invalid_argument for the first sentence b with bad[2b] >= 0 ((t, v) of its first invalid value, as
// found by find_invalid_log_prob), naming [b, t, v] and the value.
template <typename T>
void throw_first_invalid_log_prob(const T* x, int64_t batch, int64_t batch_stride, int64_t row_stride,
                                  int64_t col_stride, const int64_t* bad) {
  for (int64_t b = 0; b < batch; ++b)
    if (bad[2 * b] >= 0) {
      const T value = x[b * batch_stride + bad[2 * b] * row_stride + bad[2 * b + 1] * col_stride];
      throw std::invalid_argument(invalid_log_prob_message(b, bad[2 * b], bad[2 * b + 1], value));
    }
}

}  // namespace fastdecoder
