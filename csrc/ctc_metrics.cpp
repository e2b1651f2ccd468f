#include "ctc_metrics.hpp"

#include <algorithm>

namespace fastdecoder {

template <typename T>
std::vector<int32_t> greedy_decode(const T* scores, int64_t frames, int64_t vocab, int64_t row_stride,
                                   int64_t col_stride, int32_t blank, bool* has_nan) {
  std::vector<int32_t> out;
  int32_t prev = -1;
  bool nan = false;
  for (int64_t t = 0; t < frames; ++t) {
    const T* row = scores + t * row_stride;
    int32_t best = 0;
    T best_v = row[0];
    nan |= best_v != best_v;
    for (int64_t v = 1; v < vocab; ++v) {
      const T x = row[v * col_stride];
      nan |= x != x;
      if (x > best_v) {  // strict: ties keep the lowest index
        best_v = x;
        best = static_cast<int32_t>(v);
      }
    }
    if (best != prev && best != blank) out.push_back(best);
    prev = best;
  }
  *has_nan = nan;
  return out;
}

template std::vector<int32_t> greedy_decode<float>(const float*, int64_t, int64_t, int64_t, int64_t, int32_t, bool*);
template std::vector<int32_t> greedy_decode<double>(const double*, int64_t, int64_t, int64_t, int64_t, int32_t,
                                                    bool*);

int64_t edit_distance(const int32_t* a, int64_t na, const int32_t* b, int64_t nb) {
  // One row of the dynamic-programming table: row[j] = distance(a[:i], b[:j]).
  std::vector<int64_t> row(static_cast<size_t>(nb) + 1);
  for (int64_t j = 0; j <= nb; ++j) row[j] = j;
  for (int64_t i = 1; i <= na; ++i) {
    int64_t diag = row[0];  // distance(a[:i-1], b[:j-1])
    row[0] = i;
    for (int64_t j = 1; j <= nb; ++j) {
      const int64_t up = row[j];
      const int64_t sub = diag + (a[i - 1] != b[j - 1] ? 1 : 0);
      row[j] = std::min({up + 1, row[j - 1] + 1, sub});
      diag = up;
    }
  }
  return row[nb];
}

}  // namespace fastdecoder
