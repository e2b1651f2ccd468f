// One time step of a unidirectional multi-layer GRU, batch 1, fp32: torch.nn.GRU's math and weight layout.
//
// Per layer l (input x_l: the step's input for l = 0, else layer l - 1's new state), gates in the order r, z, n:
//   gi = W_ih x_l + b_ih,  gh = W_hh h_l + b_hh                     (3H each: rows [0, H) r, [H, 2H) z, [2H, 3H) n)
//   r  = sigmoid(gi_r + gh_r),  z = sigmoid(gi_z + gh_z)
//   n  = tanh(gi_n + r * gh_n)                                      (= tanh(W_in x + b_in + r * (W_hn h + b_hn)))
//   h' = (1 - z) n + z h, computed as n + z (h - n) like torch's CPU cell
// The step is memory-bound (b2t25: ~124 MiB of weights read per step, ~4 flops per weight): the matrix-vector
// products read 8 rows at once (8 independent accumulators share each load of x), with AVX2+FMA or AVX-512F chosen
// at run time, and a portable scalar fallback.
#pragma once
#include <cstdint>
#include <string>

namespace fastdecoder {

enum class GruIsa { kScalar, kAvx2, kAvx512 };

// The order "auto" tries. AVX2+FMA before AVX-512F: on this memory-bound product the AVX2 path measured ~9 % faster
// per b2t25 step (6.6-7.9 ms against 7.2-8.4 ms, interleaved, AMD EPYC Zen 4, one core, 2026-12-01), and it avoids
// the AVX-512 clock reduction of some Intel parts; isa "avx512" forces the other path.
constexpr GruIsa kGruIsaPreference[] = {GruIsa::kAvx2, GruIsa::kAvx512, GruIsa::kScalar};

// One layer's weights, row-major fp32: w_ih (3H, input_size), w_hh (3H, H), b_ih (3H,), b_hh (3H,).
struct GruLayerWeights {
  const float* w_ih;
  const float* w_hh;
  const float* b_ih;
  const float* b_hh;
  int64_t input_size;
};

bool gru_isa_supported(GruIsa isa);  // whether this CPU (and this build) can run the path
const char* gru_isa_name(GruIsa isa);  // "scalar" | "avx2" | "avx512"
// "auto" (the first supported path of kGruIsaPreference) or one of the names; throws std::invalid_argument for an unknown name or a
// path this CPU lacks.
GruIsa parse_gru_isa(const std::string& name);

// y = W x + b: W (rows, cols) row-major, x (cols,), b (rows,), y (rows,).
void gemv_bias(const float* w, const float* x, const float* b, float* y, int64_t rows, int64_t cols, GruIsa isa);

// y += W[:, 0:cols] x for W row-major with row stride ld (>= cols): x (cols,), y (rows,). One block of columns of a
// larger matrix (the streaming decoder's layer-0 input projection, one input bin's columns at a time).
void gemv_accumulate(const float* w, int64_t ld, const float* x, float* y, int64_t rows, int64_t cols, GruIsa isa);

// One step of `num_layers` layers of hidden size `hidden`: x (layers[0].input_size,), h (num_layers, hidden) is
// read and overwritten with the new states (h[num_layers - 1] is the step's output). `scratch` holds 6 * hidden
// floats. Non-finite inputs propagate (NaN in, NaN out); nothing is checked here.
// gi0 (3 hidden,), when not null: layer 0's input product W_ih x computed beforehand (without b_ih); then x and
// layers[0].w_ih are not read, and layer 0's gi is b_ih + gi0.
// gh_all (num_layers, 3 hidden), when not null: every layer's W_hh h + b_hh for the h given, computed beforehand
// (with gemv_bias, so the same values); then no w_hh is read.
void gru_step(const GruLayerWeights* layers, int64_t num_layers, int64_t hidden, const float* x, float* h,
              float* scratch, GruIsa isa, const float* gi0 = nullptr, const float* gh_all = nullptr);

}  // namespace fastdecoder
