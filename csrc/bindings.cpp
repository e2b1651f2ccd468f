// Thin pybind11 binding over the plain C++ cores: NumPy buffers in, Python lists / NumPy arrays out.
// Argument checking with clear messages lives in the Python wrappers (fastdecoder.decode); the checks here
// (py_arrays.hpp) only guard memory safety.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "beam_search.hpp"
#include "ctc_metrics.hpp"
#include "gru_step.hpp"
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

// Time steps of a unidirectional multi-layer nn.GRU, batch 1 (gru_step.hpp). The object holds only the shapes and the
// ISA path, never a weight pointer: every run() takes the weight arrays, checks each one's dtype, shape and layout,
// and reads them only while that call holds them (a tensor whose storage torch has since moved, freed or replaced
// cannot be read through a pointer taken earlier). run() releases the GIL; calls on separate objects may run in
// parallel threads.
class GruStep {
 public:
  GruStep(int64_t input_size, int64_t hidden_size, int64_t num_layers, const std::string& isa)
      : isa_(parse_gru_isa(isa)), hidden_(hidden_size), input_size_(input_size), layers_(num_layers) {
    if (input_size < 1 || hidden_size < 1 || num_layers < 1)
      throw std::invalid_argument("input_size, hidden_size and num_layers must be >= 1, got " +
                                  std::to_string(input_size) + ", " + std::to_string(hidden_size) + ", " +
                                  std::to_string(num_layers));
  }
  // x (frames, input_size) float32; h (num_layers, hidden_size) float32, overwritten with the states after the last
  // frame; out (frames, hidden_size) float32, row t the last layer's state after frame t. The weights: one array per
  // layer of weight_ih (3 H, input_size or H), weight_hh (3 H, H), bias_ih (3 H,), bias_hh (3 H,), C-contiguous fp32.
  void run(const py::array& x, const py::array& h, const py::array& out, const std::vector<py::array>& weight_ih,
           const std::vector<py::array>& weight_hh, const std::vector<py::array>& bias_ih,
           const std::vector<py::array>& bias_hh) const {
    steps(x, false, h, out, weight_ih, weight_hh, bias_ih, bias_hh, py::none());
  }
  // As run(), with layer 0's input products given: gi0 (frames, 3 H) float32, row t = weight_ih_l0 x_t without the
  // bias (from project()); weight_ih_l0 is checked but not read. gh (num_layers, 3 H) or None: the first frame's
  // W_hh h + b_hh of every layer for the h passed (from hidden_products()).
  void run_projected(const py::array& gi0, const py::array& h, const py::array& out,
                     const std::vector<py::array>& weight_ih, const std::vector<py::array>& weight_hh,
                     const std::vector<py::array>& bias_ih, const std::vector<py::array>& bias_hh,
                     const py::object& gh) const {
    steps(gi0, true, h, out, weight_ih, weight_hh, bias_ih, bias_hh, gh);
  }
  // gh (num_layers, 3 H) = W_hh h + b_hh per layer, for h (num_layers, H): the next step's hidden products.
  void hidden_products(const py::array& h, const py::array& gh, const std::vector<py::array>& weight_hh,
                       const std::vector<py::array>& bias_hh) const {
    const size_t L = static_cast<size_t>(layers_);
    if (weight_hh.size() != L || bias_hh.size() != L)
      throw std::invalid_argument("weight_hh and bias_hh must be lists of one array per layer (" + std::to_string(L) +
                                  " layers)");
    const int64_t G = 3 * hidden_;
    std::vector<const float*> w(L), b(L);
    for (size_t l = 0; l < L; ++l) {
      const std::string sfx = "_l" + std::to_string(l);
      w[l] = checked_f32(weight_hh[l], "weight_hh" + sfx, {G, hidden_});
      b[l] = checked_f32(bias_hh[l], "bias_hh" + sfx, {G});
    }
    const float* hp = checked_f32(h, "h", {layers_, hidden_});
    float* gp = checked_f32(gh, "gh", {layers_, G}, true);
    py::gil_scoped_release release;
    for (size_t l = 0; l < L; ++l) gemv_bias(w[l], hp + l * hidden_, b[l], gp + l * G, G, hidden_, isa_);
  }
  // acc (3 H,) += weight_ih_l0[:, col0 : col0 + n] x for x (n,): one block of columns of layer 0's input product.
  void project(const py::array& x, const py::array& acc, const py::array& weight_ih_l0, int64_t col0) const {
    const float* w = checked_f32(weight_ih_l0, "weight_ih_l0", {3 * hidden_, input_size_});
    const int64_t n = x.ndim() == 1 ? x.shape(0) : -1;
    if (n < 1 || col0 < 0 || col0 > input_size_ - n)
      throw std::invalid_argument("project: x must be (n,) with 1 <= n and col0 + n <= " +
                                  std::to_string(input_size_) + ", got shape " + shape_string(shape_of(x)) +
                                  " at col0 " + std::to_string(col0));
    const float* xp = checked_f32(x, "x", {n});
    float* ap = checked_f32(acc, "acc", {3 * hidden_}, true);
    py::gil_scoped_release release;
    gemv_accumulate(w + col0, input_size_, xp, ap, 3 * hidden_, n, isa_);
  }
  std::string isa() const { return gru_isa_name(isa_); }
  int64_t input_size() const { return input_size_; }
  int64_t hidden_size() const { return hidden_; }
  int64_t num_layers() const { return layers_; }

 private:
  // Frames of x: the step inputs (frames, input_size), or layer 0's input products (frames, 3 H) when projected.
  void steps(const py::array& x, bool projected, const py::array& h, const py::array& out,
             const std::vector<py::array>& weight_ih, const std::vector<py::array>& weight_hh,
             const std::vector<py::array>& bias_ih, const std::vector<py::array>& bias_hh,
             const py::object& gh) const {
    const size_t L = static_cast<size_t>(layers_);
    if (weight_ih.size() != L || weight_hh.size() != L || bias_ih.size() != L || bias_hh.size() != L)
      throw std::invalid_argument("weight_ih, weight_hh, bias_ih and bias_hh must be lists of one array per layer (" +
                                  std::to_string(L) + " layers)");
    const int64_t G = 3 * hidden_;
    std::vector<GruLayerWeights> layers;
    layers.reserve(L);
    for (size_t l = 0; l < L; ++l) {
      const std::string sfx = "_l" + std::to_string(l);
      const int64_t in = l == 0 ? input_size_ : hidden_;
      layers.push_back({checked_f32(weight_ih[l], "weight_ih" + sfx, {G, in}),
                        checked_f32(weight_hh[l], "weight_hh" + sfx, {G, hidden_}),
                        checked_f32(bias_ih[l], "bias_ih" + sfx, {G}), checked_f32(bias_hh[l], "bias_hh" + sfx, {G}),
                        in});
    }
    const char* name = projected ? "gi0" : "x";
    const int64_t width = projected ? G : input_size_;
    const int64_t frames = x.ndim() == 2 ? x.shape(0) : -1;
    if (frames < 0)
      throw std::invalid_argument(std::string(name) + " must be (frames, " + std::to_string(width) + "), got shape " +
                                  shape_string(shape_of(x)));
    const float* xp = checked_f32(x, name, {frames, width});
    float* hp = checked_f32(h, "h", {layers_, hidden_}, true);
    float* op = checked_f32(out, "out", {frames, hidden_}, true);
    const float* ghp = gh.is_none() ? nullptr : checked_f32(py::cast<py::array>(gh), "gh", {layers_, G});
    py::gil_scoped_release release;
    std::vector<float> scratch(static_cast<size_t>(6 * hidden_));
    const float* last = hp + (layers_ - 1) * hidden_;
    for (int64_t t = 0; t < frames; ++t) {
      const float* row = xp + t * width;
      gru_step(layers.data(), layers_, hidden_, row, hp, scratch.data(), isa_, projected ? row : nullptr,
               t == 0 ? ghp : nullptr);
      std::memmove(op + t * hidden_, last, static_cast<size_t>(hidden_) * sizeof(float));
    }
  }

  GruIsa isa_;
  int64_t hidden_, input_size_, layers_;
};

std::vector<std::string> gru_isas() {
  std::vector<std::string> out;
  for (GruIsa isa : kGruIsaPreference)
    if (gru_isa_supported(isa)) out.push_back(gru_isa_name(isa));
  return out;
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "fastdecoder native core: CTC greedy decoding, edit distance, prefix beam search, GRU step";
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
  py::class_<GruStep>(m, "GruStep")
      .def(py::init<int64_t, int64_t, int64_t, const std::string&>(), py::arg("input_size"), py::arg("hidden_size"),
           py::arg("num_layers"), py::arg("isa") = "auto")
      .def("run", &GruStep::run, py::arg("x"), py::arg("h"), py::arg("out"), py::arg("weight_ih"),
           py::arg("weight_hh"), py::arg("bias_ih"), py::arg("bias_hh"))
      .def("run_projected", &GruStep::run_projected, py::arg("gi0"), py::arg("h"), py::arg("out"),
           py::arg("weight_ih"), py::arg("weight_hh"), py::arg("bias_ih"), py::arg("bias_hh"),
           py::arg("gh") = py::none())
      .def("hidden_products", &GruStep::hidden_products, py::arg("h"), py::arg("gh"), py::arg("weight_hh"),
           py::arg("bias_hh"))
      .def("project", &GruStep::project, py::arg("x"), py::arg("acc"), py::arg("weight_ih_l0"), py::arg("col0"))
      .def_property_readonly("isa", &GruStep::isa)
      .def_property_readonly("input_size", &GruStep::input_size)
      .def_property_readonly("hidden_size", &GruStep::hidden_size)
      .def_property_readonly("num_layers", &GruStep::num_layers);
  m.def("gru_isas", &gru_isas, "the GRU step's ISA paths this CPU supports, in the order isa='auto' prefers");
  m.def("hardware_threads", &hardware_threads);
  m.attr("MAX_THREADS_PER_CORE") = kMaxThreadsPerCore;
  m.attr("MAX_BEAM_WIDTH") = kMaxBeamWidth;
}
