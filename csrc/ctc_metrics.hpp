// CTC greedy decoding and edit distance over a batch: plain C++, no Python.
#pragma once
#include <cstdint>
#include <vector>

namespace fastdecoder {

// Greedy CTC decoding of one sentence: argmax per frame over `vocab` classes of a row-major (T, V) score
// array with row stride `row_stride` (elements), then merge repeats and drop `blank`.
// Ties take the lowest class index, as torch.argmax does. *has_nan: whether a NaN was seen (it has no argmax).
template <typename T>
std::vector<int32_t> greedy_decode(const T* scores, int64_t frames, int64_t vocab, int64_t row_stride,
                                   int64_t col_stride, int32_t blank, bool* has_nan);

// Levenshtein distance (unit costs) between two token sequences.
int64_t edit_distance(const int32_t* a, int64_t na, const int32_t* b, int64_t nb);

}  // namespace fastdecoder
