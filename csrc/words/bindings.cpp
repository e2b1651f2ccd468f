// Thin pybind11 binding of the word decoder (fastdecoder._words): lexicon trie, ARPA LM, word beam search.
// Argument checking with clear messages lives in the Python wrappers (fastdecoder.decode.words / .lm); the
// checks here guard memory safety. Text inputs arrive as bytes (UTF-8) and are parsed without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "py_arrays.hpp"
#include "words/arpa_lm.hpp"
#include "words/lexicon.hpp"
#include "words/word_decoder.hpp"

namespace py = pybind11;
using namespace fastdecoder::words;

namespace {

std::string_view bytes_view(const py::bytes& b) {
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(b.ptr(), &data, &size) != 0) throw py::error_already_set();
  return std::string_view(data, static_cast<size_t>(size));
}

template <typename T>
py::tuple decode_py(const WordDecoder& dec, py::array_t<T, py::array::forcecast> log_probs,
                    py::array_t<int64_t, py::array::c_style | py::array::forcecast> lengths, int num_threads) {
  const fastdecoder::Batch3<T> x = fastdecoder::batch3(log_probs, "log_probs");
  const int64_t* len = fastdecoder::checked_lengths(lengths, x.batch, x.frames);
  const int64_t B = x.batch;
  std::vector<std::vector<WordHypothesis>> res;
  size_t ws = 0;
  {
    py::gil_scoped_release release;
    res = dec.decode_batch<T>(x.data, B, x.frames, x.vocab, x.batch_stride, x.row_stride, x.col_stride, len,
                              num_threads, &ws);
  }
  py::list out(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    py::list hyps(res[b].size());
    for (size_t i = 0; i < res[b].size(); ++i) {
      const WordHypothesis& h = res[b][i];
      hyps[i] = py::make_tuple(py::cast(h.words), h.score, h.acoustic, h.lm);
    }
    out[b] = std::move(hyps);
  }
  return py::make_tuple(out, ws);
}

// WordStream with a mutex (calls on one object are serialised; advance runs without the GIL).
struct LockedWordStream {
  explicit LockedWordStream(std::shared_ptr<WordDecoder> d) : stream(std::move(d)) {}
  template <typename T>
  void advance(py::array_t<T, py::array::forcecast> lp) {
    if (lp.ndim() != 2 || lp.shape(1) != kNumClasses)
      throw std::invalid_argument("log_probs must be (frames, " + std::to_string(kNumClasses) + ")");
    const int64_t sz = static_cast<int64_t>(sizeof(T));
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(mu);
    stream.advance(lp.data(), lp.shape(0), lp.strides(0) / sz, lp.strides(1) / sz);
  }
  WordStream stream;
  std::mutex mu;
};

}  // namespace

PYBIND11_MODULE(_words, m) {
  m.doc() = "fastdecoder word decoding core: lexicon trie, ARPA n-gram LM, lexicon-constrained CTC beam search";
  m.attr("BLANK") = kBlank;
  m.attr("SIL") = kSil;
  m.attr("NUM_CLASSES") = kNumClasses;
  // The one phoneme table: fastdecoder.phonemes (its layout must match the constants above).
  py::module_ ph = py::module_::import("fastdecoder.phonemes");
  static const std::vector<std::string> phonemes = ph.attr("PHONEMES").cast<std::vector<std::string>>();
  if (phonemes.size() != static_cast<size_t>(kNumPhonemes) || ph.attr("SIL").cast<int>() != kSil ||
      ph.attr("N_CLASSES").cast<int>() != kNumClasses)
    throw std::runtime_error("fastdecoder.phonemes does not match the native word decoder's layout (blank 0, " +
                             std::to_string(kNumPhonemes) + " phonemes, SIL " + std::to_string(kSil) + ")");

  py::class_<Lexicon, std::shared_ptr<Lexicon>>(m, "Lexicon")
      .def_static(
          "from_text",
          [](py::bytes text, bool strip_stress, bool strip_variant, bool skip_invalid, bool comments) {
            LexiconParseOptions opt;
            opt.phonemes = phonemes;
            opt.strip_stress = strip_stress;
            opt.strip_variant = strip_variant;
            opt.skip_invalid = skip_invalid;
            opt.comments = comments;
            std::string_view v = bytes_view(text);
            int64_t skipped = 0;
            std::shared_ptr<Lexicon> lex;
            {
              py::gil_scoped_release release;
              lex = std::make_shared<Lexicon>(Lexicon::from_text(v, opt, &skipped));
            }
            return py::make_tuple(lex, skipped);
          },
          py::arg("text"), py::arg("strip_stress") = true, py::arg("strip_variant") = true,
          py::arg("skip_invalid") = false, py::arg("comments") = true)
      .def_static(
          "from_entries",
          [](const std::vector<std::string>& words, py::array_t<int32_t, py::array::c_style | py::array::forcecast> ph,
             py::array_t<int64_t, py::array::c_style | py::array::forcecast> off) {
            std::vector<int32_t> phones(ph.data(), ph.data() + ph.size());
            std::vector<int64_t> offsets(off.data(), off.data() + off.size());
            return std::make_shared<Lexicon>(Lexicon::from_entries(words, phones, offsets));
          },
          py::arg("words"), py::arg("phones"), py::arg("offsets"))
      .def("subset",
           [](const Lexicon& lex, const std::vector<bool>& keep) {
             return std::make_shared<Lexicon>(lex.subset(keep));
           })
      .def_property_readonly("num_words", &Lexicon::num_words)
      .def_property_readonly("num_pronunciations", &Lexicon::num_pronunciations)
      .def_property_readonly("num_nodes", &Lexicon::num_nodes)
      .def("words", &Lexicon::words)
      .def("find", [](const Lexicon& lex, const std::string& w) { return lex.find(w); })
      .def("pronunciations",
           [](const Lexicon& lex) {
             py::list out(static_cast<size_t>(lex.num_pronunciations()));
             for (int64_t i = 0; i < lex.num_pronunciations(); ++i)
               out[static_cast<size_t>(i)] = py::make_tuple(lex.pron_word(i), py::cast(lex.pronunciation(i)));
             return out;
           })
      .def("memory_bytes", &Lexicon::memory_bytes);

  py::class_<ArpaLM, std::shared_ptr<ArpaLM>>(m, "ArpaLM")
      .def_static(
          "from_text",
          [](py::bytes text) {
            std::string_view v = bytes_view(text);
            std::shared_ptr<ArpaLM> lm;
            {
              py::gil_scoped_release release;
              lm = std::make_shared<ArpaLM>(ArpaLM::from_text(v));
            }
            return lm;
          },
          py::arg("text"))
      .def_property_readonly("order", &ArpaLM::order)
      .def_property_readonly("counts", &ArpaLM::counts)
      .def_property_readonly("vocab_size", &ArpaLM::vocab_size)
      .def_property_readonly("bos", &ArpaLM::bos)
      .def_property_readonly("eos", &ArpaLM::eos)
      .def_property_readonly("unk", &ArpaLM::unk)
      .def("vocabulary", &ArpaLM::vocabulary)
      .def("find", [](const ArpaLM& lm, const std::string& w) { return lm.find(w); })
      .def(
          "log10_prob",
          [](const ArpaLM& lm, const std::vector<int32_t>& context, int32_t word) {
            for (int32_t c : context)
              if (c < 0 || c >= lm.vocab_size()) throw std::invalid_argument("context word id out of range");
            if (word < 0 || word >= lm.vocab_size()) throw std::invalid_argument("word id out of range");
            return lm.log10_prob(context.data(), static_cast<int>(context.size()), word);
          },
          py::arg("context"), py::arg("word"))
      .def("memory_bytes", &ArpaLM::memory_bytes);

  py::class_<WordDecoder, std::shared_ptr<WordDecoder>>(m, "WordDecoder")
      .def(py::init([](std::shared_ptr<Lexicon> lex, std::shared_ptr<ArpaLM> lm, std::vector<int32_t> lm_ids,
                       int beam_width, int nbest, double lm_weight, double word_bonus, double blank_penalty,
                       double token_min_logprob, double unk_log10, bool lm_lookahead) {
             WordDecoderOptions opt;
             opt.beam_width = beam_width;
             opt.nbest = nbest;
             opt.lm_weight = lm_weight;
             opt.word_bonus = word_bonus;
             opt.blank_penalty = blank_penalty;
             opt.token_min_logprob = token_min_logprob;
             opt.unk_log10 = unk_log10;
             opt.lm_lookahead = lm_lookahead;
             return std::make_shared<WordDecoder>(lex, lm, std::move(lm_ids), opt);
           }),
           py::arg("lexicon"), py::arg("lm").none(true), py::arg("lm_ids"), py::arg("beam_width"), py::arg("nbest"),
           py::arg("lm_weight"), py::arg("word_bonus"), py::arg("blank_penalty"), py::arg("token_min_logprob"),
           py::arg("unk_log10"), py::arg("lm_lookahead"))
      .def("decode_f32", &decode_py<float>, py::arg("log_probs"), py::arg("lengths"), py::arg("num_threads"))
      .def("decode_f64", &decode_py<double>, py::arg("log_probs"), py::arg("lengths"), py::arg("num_threads"));

  py::class_<LockedWordStream>(m, "WordStream")
      .def(py::init<std::shared_ptr<WordDecoder>>(), py::arg("decoder"))
      .def("reset",
           [](LockedWordStream& s) {
             std::lock_guard<std::mutex> lock(s.mu);
             s.stream.reset();
           })
      .def("advance_f32", &LockedWordStream::advance<float>, py::arg("log_probs"))
      .def("advance_f64", &LockedWordStream::advance<double>, py::arg("log_probs"))
      .def("partial",
           [](LockedWordStream& s) {
             std::lock_guard<std::mutex> lock(s.mu);
             const WordPartial p = s.stream.partial();
             return py::make_tuple(py::cast(p.words), p.stable, p.score);
           })
      .def(
          "finish",
          [](LockedWordStream& s, int nbest) {
            if (nbest < 1 || nbest > s.stream.decoder().options().beam_width)
              throw std::invalid_argument("nbest must lie in [1, beam_width]");
            std::lock_guard<std::mutex> lock(s.mu);
            py::list out;
            for (const WordHypothesis& h : s.stream.finish(nbest))
              out.append(py::make_tuple(py::cast(h.words), h.score, h.acoustic, h.lm));
            return out;
          },
          py::arg("nbest"))
      .def_property_readonly("frames", [](LockedWordStream& s) {
        std::lock_guard<std::mutex> lock(s.mu);
        return s.stream.frames();
      });
}
