// One GRU time step, batch 1, fp32 (the math is in gru_step.hpp). Only the matrix-vector products are ISA-specific.
#include "gru_step.hpp"

#include <cmath>
#include <stdexcept>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FASTDECODER_X86 1
#include <immintrin.h>
#endif

namespace fastdecoder {
namespace {

// Rows per block: 8 accumulators in flight hide the FMA latency and let one load of x serve 8 weight rows (on the
// b2t25 shapes 8 rows read 132 MB in ~6 ms against ~10.5 ms one row at a time, AMD EPYC Zen 4, one core).
constexpr int kRows = 8;

// y[r] = b[r] + sum_c W[r, c] x[c] (b null: y[r] += sum), one row at a time; row r of W starts at w + r * ld.
void gemv_scalar(const float* w, int64_t ld, const float* x, const float* b, float* y, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = w + r * ld;
    float acc = 0.0f;
    for (int64_t c = 0; c < cols; ++c) acc += wr[c] * x[c];
    y[r] = (b ? b[r] : y[r]) + acc;
  }
}

#ifdef FASTDECODER_X86
// GCC 12's _mm512_reduce_add_ps starts from a deliberately undefined vector, which -Wall reports as maybe-uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

// R rows of W (row stride ld) times x, added to b (or, b null, to y), 16 columns per vector; the last cols % 16
// columns through a masked load.
template <int R>
__attribute__((target("avx512f"))) inline void rows_avx512(const float* w, int64_t ld, const float* x, const float* b,
                                                           float* y, int64_t cols) {
  __m512 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= cols; c += 16) {
    const __m512 xv = _mm512_loadu_ps(x + c);
    for (int i = 0; i < R; ++i) acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(w + i * ld + c), xv, acc[i]);
  }
  if (c < cols) {
    const __mmask16 m = static_cast<__mmask16>((1u << (cols - c)) - 1u);
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + c);
    for (int i = 0; i < R; ++i) acc[i] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + i * ld + c), xv, acc[i]);
  }
  for (int i = 0; i < R; ++i) y[i] = (b ? b[i] : y[i]) + _mm512_reduce_add_ps(acc[i]);
}

__attribute__((target("avx512f"))) void gemv_avx512(const float* w, int64_t ld, const float* x, const float* b,
                                                    float* y, int64_t rows, int64_t cols) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) rows_avx512<kRows>(w + r * ld, ld, x, b ? b + r : b, y + r, cols);
  for (; r < rows; ++r) rows_avx512<1>(w + r * ld, ld, x, b ? b + r : b, y + r, cols);
}

__attribute__((target("avx2,fma"))) inline float sum_avx2(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// As rows_avx512 with 8 columns per vector; the tail's lanes are chosen by a mask of lane index < cols % 8.
template <int R>
__attribute__((target("avx2,fma"))) inline void rows_avx2(const float* w, int64_t ld, const float* x, const float* b,
                                                          float* y, int64_t cols) {
  __m256 acc[R];
  for (int i = 0; i < R; ++i) acc[i] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + 8 <= cols; c += 8) {
    const __m256 xv = _mm256_loadu_ps(x + c);
    for (int i = 0; i < R; ++i) acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(w + i * ld + c), xv, acc[i]);
  }
  if (c < cols) {
    const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols - c)),
                                         _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 xv = _mm256_maskload_ps(x + c, m);
    for (int i = 0; i < R; ++i) acc[i] = _mm256_fmadd_ps(_mm256_maskload_ps(w + i * ld + c, m), xv, acc[i]);
  }
  for (int i = 0; i < R; ++i) y[i] = (b ? b[i] : y[i]) + sum_avx2(acc[i]);
}

__attribute__((target("avx2,fma"))) void gemv_avx2(const float* w, int64_t ld, const float* x, const float* b, float* y,
                                                   int64_t rows, int64_t cols) {
  int64_t r = 0;
  for (; r + kRows <= rows; r += kRows) rows_avx2<kRows>(w + r * ld, ld, x, b ? b + r : b, y + r, cols);
  for (; r < rows; ++r) rows_avx2<1>(w + r * ld, ld, x, b ? b + r : b, y + r, cols);
}

#pragma GCC diagnostic pop
#endif  // FASTDECODER_X86

inline float sigmoid(float v) { return 1.0f / (1.0f + std::exp(-v)); }

}  // namespace

bool gru_isa_supported(GruIsa isa) {
  switch (isa) {
    case GruIsa::kScalar:
      return true;
#ifdef FASTDECODER_X86
    case GruIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case GruIsa::kAvx512:
      return __builtin_cpu_supports("avx512f");
#endif
    default:
      return false;
  }
}

const char* gru_isa_name(GruIsa isa) {
  switch (isa) {
    case GruIsa::kAvx512:
      return "avx512";
    case GruIsa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

GruIsa parse_gru_isa(const std::string& name) {
  for (GruIsa isa : kGruIsaPreference)  // ends at kScalar, always supported
    if (name == "auto" && gru_isa_supported(isa)) return isa;
  for (GruIsa isa : kGruIsaPreference) {
    if (name != gru_isa_name(isa)) continue;
    if (!gru_isa_supported(isa))
      throw std::invalid_argument("isa='" + name + "': this CPU (or this build) has no " + name +
                                  " path; use 'auto' or one of the supported paths");
    return isa;
  }
  throw std::invalid_argument("isa must be 'auto', 'avx512', 'avx2' or 'scalar', got '" + name + "'");
}

namespace {
void gemv(const float* w, int64_t ld, const float* x, const float* b, float* y, int64_t rows, int64_t cols,
          GruIsa isa) {
#ifdef FASTDECODER_X86
  if (isa == GruIsa::kAvx512) return gemv_avx512(w, ld, x, b, y, rows, cols);
  if (isa == GruIsa::kAvx2) return gemv_avx2(w, ld, x, b, y, rows, cols);
#endif
  gemv_scalar(w, ld, x, b, y, rows, cols);
}
}  // namespace

void gemv_bias(const float* w, const float* x, const float* b, float* y, int64_t rows, int64_t cols, GruIsa isa) {
  gemv(w, cols, x, b, y, rows, cols, isa);
}

void gemv_accumulate(const float* w, int64_t ld, const float* x, float* y, int64_t rows, int64_t cols, GruIsa isa) {
  gemv(w, ld, x, nullptr, y, rows, cols, isa);
}

void gru_step(const GruLayerWeights* layers, int64_t num_layers, int64_t hidden, const float* x, float* h,
              float* scratch, GruIsa isa, const float* gi0, const float* gh_all) {
  const int64_t H = hidden;
  float* gi = scratch;       // (3H,) W_ih x + b_ih
  float* gh_own = scratch + 3 * H;  // (3H,) W_hh h + b_hh, unless gh_all gives it
  const float* in = x;
  for (int64_t l = 0; l < num_layers; ++l) {
    const GruLayerWeights& L = layers[l];
    float* hl = h + l * H;
    if (l == 0 && gi0 != nullptr) {
      for (int64_t j = 0; j < 3 * H; ++j) gi[j] = L.b_ih[j] + gi0[j];
    } else {
      gemv_bias(L.w_ih, in, L.b_ih, gi, 3 * H, L.input_size, isa);
    }
    const float* gh = gh_own;
    if (gh_all != nullptr) {
      gh = gh_all + l * 3 * H;
    } else {
      gemv_bias(L.w_hh, hl, L.b_hh, gh_own, 3 * H, H, isa);
    }
    for (int64_t j = 0; j < H; ++j) {
      const float r = sigmoid(gi[j] + gh[j]);
      const float z = sigmoid(gi[H + j] + gh[H + j]);
      const float n = std::tanh(gi[2 * H + j] + r * gh[2 * H + j]);
      hl[j] = n + z * (hl[j] - n);  // h' = (1 - z) n + z h; h[j] is read only here, so in place is safe
    }
    in = hl;
  }
}

}  // namespace fastdecoder
