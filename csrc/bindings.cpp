// Thin pybind11 binding over the plain C++ cores: NumPy buffers in, Python lists / NumPy arrays out.
// Argument checking with clear messages lives in the Python wrappers (fastdecoder.decode); the checks here
// (py_arrays.hpp) only guard memory safety.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "beam_search.hpp"
#include "ctc_metrics.hpp"
#include "log_math.hpp"
#include "py_arrays.hpp"
#include "thread_pool.hpp"

namespace py = pybind11;
using namespace fastdecoder;

namespace {

template <typename T>
std::vector<std::vector<int32_t>> greedy_batch(py::array_t<T, py::array::forcecast> scores,
                                               py::array_t<int64_t, py::array::c_style | py::array::forcecast> lengths,
                                               int32_t blank) {
  const Batch3<T> x = batch3(scores, "scores");
  const int64_t* len = checked_lengths(lengths, x.batch, x.frames);
  if (x.vocab < 1 || blank < 0 || blank >= x.vocab) throw std::invalid_argument("blank out of range");
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(x.batch));
  {
    py::gil_scoped_release release;
    for (int64_t b = 0; b < x.batch; ++b) {
      const T* s = x.data + b * x.batch_stride;
      bool nan = false;
      out[b] = greedy_decode<T>(s, len[b], x.vocab, x.row_stride, x.col_stride, blank, &nan);
      if (!nan) continue;
      for (int64_t t = 0; t < len[b]; ++t)  // NaN has no argmax (any finite value or an infinity has): name it
        for (int64_t v = 0; v < x.vocab; ++v)
          if (std::isnan(s[t * x.row_stride + v * x.col_stride]))
            throw std::invalid_argument("scores[" + std::to_string(b) + ", " + std::to_string(t) + ", " +
                                        std::to_string(v) + "] is NaN");
  }
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
  const Batch3<T> x = batch3(log_probs, "log_probs");
  const int64_t* len = checked_lengths(lengths, x.batch, x.frames);
  const int64_t B = x.batch;
  if (x.vocab < 1 || blank < 0 || blank >= x.vocab) throw std::invalid_argument("blank out of range");
  if (beam_width < 1 || beam_width > kMaxBeamWidth || nbest < 1 || nbest > beam_width)
    throw std::invalid_argument("beam_width must lie in [1, " + std::to_string(kMaxBeamWidth) +
                                "] and nbest in [1, beam_width]");
  BeamOptions opt;
  opt.beam_width = beam_width;
  opt.blank = blank;
  opt.nbest = nbest;
  opt.token_min_logprob = token_min_logprob;
  opt.frames = return_frames;
  std::vector<std::vector<Hypothesis>> res;
  {
    py::gil_scoped_release release;  // a non-finite input throws std::invalid_argument -> ValueError
    res = beam_search_batch<T>(x.data, B, x.frames, x.vocab, x.batch_stride, x.row_stride, x.col_stride, len, opt,
                               num_threads);
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

// One sentence decoded frame by frame (PrefixBeamSearch's state); advance runs without the GIL. Calls on one
// object are serialised by a mutex (one stream per thread is the intended use).
class BeamStream {
 public:
  BeamStream(int64_t vocab, int beam_width, int blank, double token_min_logprob) {
    if (vocab < 1 || blank < 0 || blank >= vocab) throw std::invalid_argument("blank out of range");
    if (beam_width < 1 || beam_width > kMaxBeamWidth)
      throw std::invalid_argument("beam_width must lie in [1, " + std::to_string(kMaxBeamWidth) + "]");
    opt_.beam_width = beam_width;
    opt_.blank = blank;
    opt_.token_min_logprob = token_min_logprob;
    search_.begin(opt_, vocab);
  }
  void reset() {
    std::lock_guard<std::mutex> lock(mu_);
    search_.begin(opt_, search_.vocab());
  }
  template <typename T>
  void advance(py::array_t<T, py::array::forcecast> lp) {
    if (lp.ndim() != 2 || lp.shape(1) != search_.vocab())
      throw std::invalid_argument("log_probs must be (frames, " + std::to_string(search_.vocab()) + ")");
    const int64_t sz = static_cast<int64_t>(sizeof(T));
    const int64_t n = lp.shape(0), st = lp.strides(0) / sz, sv = lp.strides(1) / sz;
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu_);
    int64_t bad[2] = {-1, -1};  // (frame of this advance, class) of the first value outside the input policy
    find_invalid_log_prob(lp.data(), n, search_.vocab(), st, sv, &bad[0], &bad[1]);
    throw_first_invalid_log_prob(lp.data(), 1, 0, st, sv, bad);
    search_.advance(lp.data(), n, st, sv);
  }
  py::tuple partial() {
    std::lock_guard<std::mutex> lock(mu_);
    const Partial p = search_.partial();
    return py::make_tuple(py::cast(p.tokens), p.stable, p.log_score);
  }
  py::list hypotheses(int nbest) {
    if (nbest < 1 || nbest > opt_.beam_width) throw std::invalid_argument("nbest must lie in [1, beam_width]");
    std::lock_guard<std::mutex> lock(mu_);
    py::list out;
    for (const Hypothesis& h : search_.hypotheses(nbest)) out.append(py::make_tuple(py::cast(h.tokens), h.log_score));
    return out;
  }
  int64_t frames() {
    std::lock_guard<std::mutex> lock(mu_);
    return search_.frames();
  }

 private:
  BeamOptions opt_;
  PrefixBeamSearch search_;
  std::mutex mu_;
};

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "fastdecoder native core: CTC greedy decoding, edit distance, prefix beam search";
  m.def("greedy_decode_f32", &greedy_batch<float>, py::arg("scores"), py::arg("lengths"), py::arg("blank"));
  m.def("greedy_decode_f64", &greedy_batch<double>, py::arg("scores"), py::arg("lengths"), py::arg("blank"));
  m.def("edit_distance_batch", &edit_distance_batch, py::arg("hyp"), py::arg("hyp_offsets"), py::arg("ref"),
        py::arg("ref_offsets"));
  m.def("beam_search_f32", &beam_search_batch_py<float>, py::arg("log_probs"), py::arg("lengths"),
        py::arg("beam_width"), py::arg("blank"), py::arg("nbest"), py::arg("token_min_logprob"),
        py::arg("return_frames"), py::arg("num_threads"));
  m.def("beam_search_f64", &beam_search_batch_py<double>, py::arg("log_probs"), py::arg("lengths"),
        py::arg("beam_width"), py::arg("blank"), py::arg("nbest"), py::arg("token_min_logprob"),
        py::arg("return_frames"), py::arg("num_threads"));
  py::class_<BeamStream>(m, "BeamStream")
      .def(py::init<int64_t, int, int, double>(), py::arg("vocab"), py::arg("beam_width"), py::arg("blank"),
           py::arg("token_min_logprob"))
      .def("reset", &BeamStream::reset)
      .def("advance_f32", &BeamStream::advance<float>, py::arg("log_probs"))
      .def("advance_f64", &BeamStream::advance<double>, py::arg("log_probs"))
      .def("partial", &BeamStream::partial)
      .def("hypotheses", &BeamStream::hypotheses, py::arg("nbest"))
      .def_property_readonly("frames", &BeamStream::frames);
  m.def("hardware_threads", &hardware_threads);
  m.attr("MAX_THREADS_PER_CORE") = kMaxThreadsPerCore;
  m.attr("MAX_BEAM_WIDTH") = kMaxBeamWidth;
}
