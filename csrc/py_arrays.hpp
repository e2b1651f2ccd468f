// Input normalisation shared by the pybind11 bindings (_native, _words): one rule for every (B, T, V) float array.
// The Python wrappers (fastdecoder.decode.beam.as_log_prob_array) already copy arrays whose strides are not whole
// elements; this is the memory-safety guard behind them.
#pragma once
#include <pybind11/numpy.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "limits.hpp"

namespace fastdecoder {

// A (B, T, V) array of T with its element strides.
template <typename T>
struct Batch3 {
  const T* data;
  int64_t batch, frames, vocab;
  int64_t batch_stride, row_stride, col_stride;  // in elements
};

template <typename T>
Batch3<T> batch3(const pybind11::array_t<T, pybind11::array::forcecast>& a, const char* name) {
  if (a.ndim() != 3) throw std::invalid_argument(std::string(name) + " must be (B, T, V)");
  const int64_t sz = static_cast<int64_t>(sizeof(T));
  if (a.size() > 0 && reinterpret_cast<uintptr_t>(a.data()) % alignof(T) != 0)  // an empty array reads nothing
    throw std::invalid_argument(std::string(name) + " is not aligned to its element size; pass a copy (numpy.array(x))");
  int64_t st[3];
  for (int d = 0; d < 3; ++d) {
    st[d] = a.shape(d) > 1 ? a.strides(d) : 0;  // the stride of an extent-1 axis is never used
    if (st[d] % sz != 0)
      throw std::invalid_argument(std::string(name) + " has strides that are not a whole number of elements; pass "
                                  "a copy (numpy.array(x))");
  }
  if (a.shape(1) > kMaxFrames)
    throw std::invalid_argument(std::string(name) + " has " + std::to_string(a.shape(1)) + " frames; at most " +
                                std::to_string(kMaxFrames) + " are supported");
  return Batch3<T>{a.data(), a.shape(0), a.shape(1), a.shape(2), st[0] / sz, st[1] / sz, st[2] / sz};
}

// lengths (B,) int64 in [0, frames].
inline const int64_t* checked_lengths(const pybind11::array_t<int64_t, pybind11::array::c_style |
                                                                            pybind11::array::forcecast>& lengths,
                                      int64_t batch, int64_t frames) {
  if (lengths.ndim() != 1 || lengths.shape(0) != batch) throw std::invalid_argument("lengths must be (B,)");
  const int64_t* len = lengths.data();
  for (int64_t b = 0; b < batch; ++b)
    if (len[b] < 0 || len[b] > frames) throw std::invalid_argument("length out of range");
  return len;
}

inline std::vector<int64_t> shape_of(const pybind11::array& a) { return {a.shape(), a.shape() + a.ndim()}; }

// "(2, 3)", "(3,)", "()".
inline std::string shape_string(const std::vector<int64_t>& d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + (d.size() == 1 ? ",)" : ")");
}

// The data of `a`, which must be a C-contiguous native-order float32 array of exactly `shape` (and writable when
// asked); otherwise std::invalid_argument naming the array, the expected and the actual dtype/shape.
inline float* checked_f32(const pybind11::array& a, const std::string& name, const std::vector<int64_t>& shape,
                          bool writable = false) {
  const std::vector<int64_t> got = shape_of(a);
  const bool f32 = pybind11::isinstance<pybind11::array_t<float>>(a);
  const bool contiguous = (a.flags() & pybind11::array::c_style) != 0;
  if (!f32 || got != shape || !contiguous || (writable && !a.writeable()))
    throw std::invalid_argument(name + " must be a " + (writable ? "writable " : "") +
                                "C-contiguous float32 array of shape " + shape_string(shape) + "; got " +
                                std::string(pybind11::str(a.dtype())) + " of shape " + shape_string(got) +
                                (contiguous ? "" : ", not C-contiguous") +
                                (writable && !a.writeable() ? ", read-only" : ""));
  return static_cast<float*>(const_cast<void*>(a.data()));
}

}  // namespace fastdecoder
