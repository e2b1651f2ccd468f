// Thin pybind11 binding over the plain C++ cores: NumPy buffers in, Python lists / NumPy arrays out.
// Argument checking with clear messages lives in the Python wrappers (fastdecoder.decode); the asserts
// here only guard memory safety.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "beam_search.hpp"
#include "ctc_metrics.hpp"
#include "thread_pool.hpp"

namespace py = pybind11;
using namespace fastdecoder;

namespace {

template <typename T>
std::vector<std::vector<int32_t>> greedy_batch(py::array_t<T, py::array::forcecast> scores,
                                               py::array_t<int64_t, py::array::forcecast> lengths,
                                               int32_t blank) {
  if (scores.ndim() != 3) throw std::invalid_argument("scores must be (B, T, V)");
  const int64_t B = scores.shape(0), T_ = scores.shape(1), V = scores.shape(2);
  if (lengths.ndim() != 1 || lengths.shape(0) != B) throw std::invalid_argument("lengths must be (B,)");
  const int64_t sb = scores.strides(0) / static_cast<int64_t>(sizeof(T));
  const int64_t st = scores.strides(1) / static_cast<int64_t>(sizeof(T));
  const int64_t sv = scores.strides(2) / static_cast<int64_t>(sizeof(T));
  auto len = lengths.template unchecked<1>();
  for (int64_t b = 0; b < B; ++b)
    if (len(b) < 0 || len(b) > T_) throw std::invalid_argument("length out of range");
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(B));
  const T* base = scores.data();
  {
    py::gil_scoped_release release;
    for (int64_t b = 0; b < B; ++b) out[b] = greedy_decode<T>(base + b * sb, len(b), V, st, sv, blank);
  }
  return out;
}

std::vector<std::vector<int32_t>> collapse_batch(py::array_t<int64_t, py::array::forcecast> labels,
                                                 py::array_t<int64_t, py::array::forcecast> lengths,
                                                 int32_t blank) {
  if (labels.ndim() != 2) throw std::invalid_argument("labels must be (B, T)");
  const int64_t B = labels.shape(0), T_ = labels.shape(1);
  if (lengths.ndim() != 1 || lengths.shape(0) != B) throw std::invalid_argument("lengths must be (B,)");
  auto len = lengths.unchecked<1>();
  const int64_t sb = labels.strides(0) / 8, st = labels.strides(1) / 8;
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    if (len(b) < 0 || len(b) > T_) throw std::invalid_argument("length out of range");
    out[b] = collapse_labels(labels.data() + b * sb, len(b), st, blank);
  }
  return out;
}

// Edit distances of B (hypothesis, reference) pairs given as flat token arrays with offsets (B + 1,).
py::array_t<int64_t> edit_distance_batch(py::array_t<int32_t, py::array::c_style | py::array::forcecast> hyp,
                                         py::array_t<int64_t, py::array::c_style | py::array::forcecast> hyp_off,
                                         py::array_t<int32_t, py::array::c_style | py::array::forcecast> ref,
                                         py::array_t<int64_t, py::array::c_style | py::array::forcecast> ref_off) {
  if (hyp_off.ndim() != 1 || ref_off.ndim() != 1 || hyp_off.shape(0) != ref_off.shape(0) || hyp_off.shape(0) < 1)
    throw std::invalid_argument("offsets must be (B + 1,) arrays of equal length");
  const int64_t B = hyp_off.shape(0) - 1;
  const int64_t* ho = hyp_off.data();
  const int64_t* ro = ref_off.data();
  if (ho[0] != 0 || ro[0] != 0 || ho[B] != hyp.size() || ro[B] != ref.size())
    throw std::invalid_argument("offsets do not match the token arrays");
  for (int64_t b = 0; b < B; ++b)
    if (ho[b + 1] < ho[b] || ro[b + 1] < ro[b]) throw std::invalid_argument("offsets must be non-decreasing");
  py::array_t<int64_t> out(B);
  int64_t* d = out.mutable_data();
  const int32_t* h = hyp.data();
  const int32_t* r = ref.data();
  {
    py::gil_scoped_release release;
    for (int64_t b = 0; b < B; ++b)
      d[b] = edit_distance(h + ho[b], ho[b + 1] - ho[b], r + ro[b], ro[b + 1] - ro[b]);
  }
  return out;
}

// CTC prefix beam search over a (B, T, V) batch with any strides; decoding runs without the GIL on
// `num_threads` threads (0 = all cores). Returns, per sentence, a list of (tokens, log_score[, frames]).
template <typename T>
py::list beam_search_batch_py(py::array_t<T, py::array::forcecast> log_probs,
                              py::array_t<int64_t, py::array::c_style | py::array::forcecast> lengths, int beam_width,
                              int blank, int nbest, double token_min_logprob, bool return_frames, int num_threads) {
  if (log_probs.ndim() != 3) throw std::invalid_argument("log_probs must be (B, T, V)");
  const int64_t B = log_probs.shape(0), T_ = log_probs.shape(1), V = log_probs.shape(2);
  if (lengths.ndim() != 1 || lengths.shape(0) != B) throw std::invalid_argument("lengths must be (B,)");
  if (V < 1 || blank < 0 || blank >= V) throw std::invalid_argument("blank out of range");
  if (beam_width < 1 || nbest < 1) throw std::invalid_argument("beam_width and nbest must be >= 1");
  const int64_t* len = lengths.data();
  for (int64_t b = 0; b < B; ++b)
    if (len[b] < 0 || len[b] > T_) throw std::invalid_argument("length out of range");
  const int64_t sz = static_cast<int64_t>(sizeof(T));
  BeamOptions opt;
  opt.beam_width = beam_width;
  opt.blank = blank;
  opt.nbest = nbest;
  opt.token_min_logprob = token_min_logprob;
  opt.frames = return_frames;
  std::vector<std::vector<Hypothesis>> res;
  {
    py::gil_scoped_release release;  // a non-finite input throws std::invalid_argument -> ValueError
    res = beam_search_batch<T>(log_probs.data(), B, T_, V, log_probs.strides(0) / sz, log_probs.strides(1) / sz,
                               log_probs.strides(2) / sz, len, opt, num_threads);
  }
  // Python objects built with the C API (PyList_SET_ITEM steals the new references): this part holds the GIL.
  auto int_list = [](const std::vector<int32_t>& v) {
    PyObject* l = PyList_New(static_cast<Py_ssize_t>(v.size()));
    if (!l) throw py::error_already_set();
    for (size_t j = 0; j < v.size(); ++j) PyList_SET_ITEM(l, static_cast<Py_ssize_t>(j), PyLong_FromLong(v[j]));
    return py::reinterpret_steal<py::list>(l);
  };
  py::list out(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    py::list hyps(res[b].size());
    for (size_t i = 0; i < res[b].size(); ++i) {
      const Hypothesis& h = res[b][i];
      if (return_frames)
        hyps[i] = py::make_tuple(int_list(h.tokens), h.log_score, int_list(h.frames));
      else
        hyps[i] = py::make_tuple(int_list(h.tokens), h.log_score);
    }
    out[b] = std::move(hyps);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "fastdecoder native core: CTC greedy decoding, edit distance, prefix beam search";
  m.def("greedy_decode_f32", &greedy_batch<float>, py::arg("scores"), py::arg("lengths"), py::arg("blank"));
  m.def("greedy_decode_f64", &greedy_batch<double>, py::arg("scores"), py::arg("lengths"), py::arg("blank"));
  m.def("collapse_labels", &collapse_batch, py::arg("labels"), py::arg("lengths"), py::arg("blank"));
  m.def("edit_distance_batch", &edit_distance_batch, py::arg("hyp"), py::arg("hyp_offsets"), py::arg("ref"),
        py::arg("ref_offsets"));
  m.def("beam_search_f32", &beam_search_batch_py<float>, py::arg("log_probs"), py::arg("lengths"),
        py::arg("beam_width"), py::arg("blank"), py::arg("nbest"), py::arg("token_min_logprob"),
        py::arg("return_frames"), py::arg("num_threads"));
  m.def("beam_search_f64", &beam_search_batch_py<double>, py::arg("log_probs"), py::arg("lengths"),
        py::arg("beam_width"), py::arg("blank"), py::arg("nbest"), py::arg("token_min_logprob"),
        py::arg("return_frames"), py::arg("num_threads"));
  m.def("hardware_threads", []() { return resolve_num_threads(0, int64_t{1} << 30); });
}
