"""Fused training augmentation in one pass: white noise + per-trial offset + Gaussian smoothing + masks.

For x (B, T, C) the kernel computes, in float32,

    v[b, t, c]   = x[b, t, c] + white_std * N1[b, t, c] + offset_std * N2[b, c]    for 0 <= t < length[b]
                 = 0                                                               otherwise (t < 0 or t >= length[b])
    s[b, t, c]   = sum_k taps[k] * v[b, t + k - left, c]       left = (n - 1) // 2   (cross-correlation, as conv1d)
    out[b, t, c] = 0 if t >= length[b], t in a time mask of b, or c in a channel mask of b;  s[b, t, c] otherwise

and stores it as float32 or bfloat16. x is read once and the output written once; the noise never exists in
memory: it is generated in registers from a counter-based generator (Philox-4x32-10, the generator behind
``tl.randint4x``) keyed on (seed, index), exactly once per input element, and a seed reproduces a batch exactly.
``fastdecoder.ops.augment.philox`` has the same generator in PyTorch; both take their constants from
``fastdecoder.kernels.philox``.
The launch helpers are in ``fastdecoder.ops.augment.launcher``.

Noise definition (shared with the PyTorch reference):
  * counters: c0, c1 = low and high 32 bits of a 64-bit counter, c2 = stream, c3 = 0; key = (seed_lo, seed_hi).
  * N1[b, t, c] (stream 0): counter (b * T + t) * C4 + c // 4, output word c % 4, with C4 = ceil(C / 4).
  * N2[b, c]    (stream 1): counter b * C4 + c // 4, output word c % 4 (independent of T).
  * words (i0, i1) -> normals (z0, z1) and (i2, i3) -> (z2, z3) by Box-Muller on the top 24 bits:
        u = ((i >> 8) + 0.5) * 2^-24 in (0, 1),  v = (i' >> 8) * 2^-24 in [0, 1),  th = 2 pi (v - 1/2),
        z = sqrt(-2 log u) * cos(th),  z' = sqrt(-2 log u) * sin(th).
    Four normals per Philox call; the uniforms are exact in float32, so only log/sqrt/cos/sin differ between
    Triton, its interpreter and PyTorch: by ulps, or with FAST_MATH on NVIDIA GPUs (MUFU approximations) by
    < 2^-20.5 absolute in cos/sin (accurate on [-pi, pi], hence the centred angle), and with FAST_MATH = 2
    (bfloat16 outputs only) also the MUFU log2, off by up to ~6e-4 in the rare z near 0.

Precision follows the output dtype on NVIDIA GPUs: float32 output -> tf32x3 products, precise log, MUFU sin/cos
(~1e-6 of the reference); bfloat16 output -> tf32 products (2^-11 relative) and MUFU log2 as well: errors below
bfloat16's 2^-9, a third fewer instructions.

Smoothing as matrix products: a program owns one sample b and one tile of BLOCK_C channels and walks along time in
tiles of BLOCK_T rows. Iteration i forms v_i, the noisy input rows [i BT, (i + 1) BT), and writes the output rows
t = i BT - right + o (o < BT, right = n // 2), which need input rows [i BT - (n - 1), (i + 1) BT): the tail of the
previous tile and the current one (n - 1 <= BT). With banded matrices of the taps,

    out_i = W_cur @ v_i + W_prev @ v_{i-1},
    W_cur[o, j] = taps[j - o + n - 1],  W_prev[o, j] = taps[j - o + n - 1 - BT]  (zero outside 0..n-1),

two ``tl.dot`` on tensor cores (precision as above; "ieee" off NVIDIA GPUs), and v_i is carried to the next
iteration: each element's noise is generated once and no halo is re-read. The per-trial offset N2, the channel
masks and the two matrices are formed once per program. Long sequences may be split into chunks of iterations
(grid axis 1); a chunk after the first regenerates its previous tile once.

Only the Triton API common to 3.6 .. 3.9 is used (plain pointer arithmetic + masks, tl.join/reshape, tl.dot,
tl.inline_asm_elementwise for the GPU's MUFU log2/sin/cos).
"""
import triton
import triton.language as tl

from fastdecoder.kernels.philox import PHILOX_KEY_A, PHILOX_KEY_B, PHILOX_ROUND_A, PHILOX_ROUND_B

__all__ = ["augment_kernel", "normals_kernel", "philox_words_kernel"]

# The generator's constants, defined once in the PyTorch oracle (globals a kernel reads must be constexpr).
_ROUND_A = tl.constexpr(PHILOX_ROUND_A)
_ROUND_B = tl.constexpr(PHILOX_ROUND_B)
_KEY_A = tl.constexpr(PHILOX_KEY_A)
_KEY_B = tl.constexpr(PHILOX_KEY_B)


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on uint32 counters (c0..c3) with uint32 key (k0, k1); returns four uint32 words.

    Philox-4x32-10 (Salmon et al. 2011) with the constants of triton.language.random (tl.randint4x).
    """
    for _ in tl.static_range(10):
        _c0 = c0
        _c2 = c2
        c0 = tl.umulhi(_c2, _ROUND_B) ^ c1 ^ k0
        c2 = tl.umulhi(_c0, _ROUND_A) ^ c3 ^ k1
        c1 = _c2 * _ROUND_B  # low 32 bits (uint32 wraps)
        c3 = _c0 * _ROUND_A
        k0 = k0 + _KEY_A
        k1 = k1 + _KEY_B
    return c0, c1, c2, c3


@triton.jit
def _box_muller(i_r, i_th, FAST_MATH: tl.constexpr):
    """Two uint32 words -> two independent N(0, 1) float32 (top 24 bits of each word, exact uniforms)."""
    u = ((i_r >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08  # (i >> 8 + 1/2) 2^-24 in (0, 1), exact
    v = (i_th >> 8).to(tl.float32) * 5.9604644775390625e-08  # [0, 1), exact
    if FAST_MATH == 2:
        # MUFU log2: absolute error ~2^-22 near u = 1, i.e. up to ~6e-4 in the rare z with r < 0.02: below
        # bfloat16's resolution, so used for bfloat16 outputs only.
        lg2 = tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [u], dtype=tl.float32, is_pure=True,
                                        pack=1)
        r = tl.sqrt(lg2 * -1.3862943611198906)  # -2 ln(u) = -2 ln(2) log2(u)
    else:
        r = tl.sqrt(-2.0 * tl.log(u))
    th = (v - 0.5) * 6.283185307179586  # uniform angle in [-pi, pi) (2 pi rounded to float32)
    if FAST_MATH >= 1:
        # MUFU sin/cos: absolute error < 2^-20.5 on [-pi, pi], a fraction of the libdevice cost (CUDA only).
        c = tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=r,r", [th], dtype=tl.float32, is_pure=True,
                                      pack=1)
        s = tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=r,r", [th], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        c = tl.cos(th)
        s = tl.sin(th)
    return r * c, r * s


@triton.jit
def _normals4(ctr, stream, k0, k1, FAST_MATH: tl.constexpr):
    """Four N(0, 1) blocks for an int64 counter block on a stream (uint32 scalar) with key (k0, k1)."""
    c0 = ctr.to(tl.uint32)  # low 32 bits
    c1 = (ctr >> 32).to(tl.uint32)
    c2 = c0 * 0 + stream
    c3 = c0 * 0
    i0, i1, i2, i3 = _philox4x32_10(c0, c1, c2, c3, k0, k1)
    z0, z1 = _box_muller(i0, i1, FAST_MATH)
    z2, z3 = _box_muller(i2, i3, FAST_MATH)
    return z0, z1, z2, z3


@triton.jit
def _interleave4(z0, z1, z2, z3, ROWS: tl.constexpr, COLS4: tl.constexpr):
    """(ROWS, COLS4) x 4 -> (ROWS, 4 * COLS4) with out[:, 4 * j + m] = z_m[:, j]."""
    # join(join(z0, z2), join(z1, z3))[r, j, p, q] = z_{2p+q}[r, j]; row-major flattening of (p, q) gives 2p + q.
    z = tl.join(tl.join(z0, z2), tl.join(z1, z3))
    return tl.reshape(z, (ROWS, 4 * COLS4))


@triton.jit
def _noisy_tile(x_b, stride_xt, stride_xc, i, length, cols, c_ok, groups, row0, C4, k0, k1, white_std, offset_row,
                BLOCK_T: tl.constexpr, BLOCK_C4: tl.constexpr, HAS_WHITE: tl.constexpr, HAS_OFFSET: tl.constexpr,
                FAST_MATH: tl.constexpr):
    """v for input rows [i BT, (i + 1) BT) of the program's channel tile: x + noise inside [0, length), else 0."""
    t_in = i * BLOCK_T + tl.arange(0, BLOCK_T)
    ok = ((t_in >= 0) & (t_in < length))[:, None] & c_ok[None, :]
    v = tl.load(x_b + t_in.to(tl.int64)[:, None] * stride_xt + cols[None, :] * stride_xc, mask=ok,
                other=0.0).to(tl.float32)
    if HAS_WHITE:
        ctr = ((row0 + t_in) * C4)[:, None] + groups[None, :]  # N1 counter (b T + t) C4 + c // 4 (int64)
        z0, z1, z2, z3 = _normals4(ctr, 0, k0, k1, FAST_MATH)
        v = v + white_std * _interleave4(z0, z1, z2, z3, BLOCK_T, BLOCK_C4)
    if HAS_OFFSET:
        v = v + offset_row
    return tl.where(ok, v, 0.0)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
def augment_kernel(
    x_ptr, out_ptr, len_ptr, taps_ptr, tmask_ptr, fmask_ptr,
    T, C, C4,
    stride_xb, stride_xt, stride_xc,
    n_c_tiles, n_iters, iters_per_chunk, n_tmasks, n_fmasks,
    seed_lo, seed_hi, white_std, offset_std,
    N_TAPS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_WHITE: tl.constexpr, HAS_OFFSET: tl.constexpr, DOT_PRECISION: tl.constexpr, FAST_MATH: tl.constexpr,
):
    # Grid: axis 0 = (sample b, channel tile), axis 1 = chunk of time tiles.
    RIGHT: tl.constexpr = N_TAPS // 2  # 'same' padding: left = (n - 1) // 2, right = n // 2
    BLOCK_C4: tl.constexpr = BLOCK_C // 4
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    b = pid // n_c_tiles
    ct = pid % n_c_tiles
    b64 = b.to(tl.int64)
    length = tl.load(len_ptr + b)
    rows = tl.arange(0, BLOCK_T)
    cols = ct * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    groups = ct * BLOCK_C4 + tl.arange(0, BLOCK_C4)  # channel groups c // 4 of this tile
    k0 = seed_lo.to(tl.uint32)  # Philox key = the 64-bit seed
    k1 = seed_hi.to(tl.uint32)
    x_b = x_ptr + b64 * stride_xb
    out_b = out_ptr + b64 * T * C
    row0 = b64 * T  # global row index of (b, t = 0)

    # Once per program: channel masks, the per-trial offset N2[b, tile] and the banded tap matrices.
    keep_col = c_ok
    for m in range(n_fmasks):
        start = tl.load(fmask_ptr + (b * n_fmasks + m) * 2)
        width = tl.load(fmask_ptr + (b * n_fmasks + m) * 2 + 1)
        keep_col = keep_col & ((cols < start) | (cols >= start + width))
    offset_row = tl.zeros((1, BLOCK_C), dtype=tl.float32)
    if HAS_OFFSET:
        z0, z1, z2, z3 = _normals4((b64 * C4 + groups)[None, :], 1, k0, k1, FAST_MATH)
        offset_row = offset_std * _interleave4(z0, z1, z2, z3, 1, BLOCK_C4)
    if N_TAPS > 1:
        kk = rows[None, :] - rows[:, None] + (N_TAPS - 1)  # j - o + n - 1
        w_cur = tl.load(taps_ptr + kk, mask=(kk >= 0) & (kk < N_TAPS), other=0.0)
        kp = kk - BLOCK_T
        w_prev = tl.load(taps_ptr + kp, mask=(kp >= 0) & (kp < N_TAPS), other=0.0)
    else:
        tap0 = tl.load(taps_ptr)

    i_start = chunk * iters_per_chunk
    i_end = tl.minimum(i_start + iters_per_chunk, n_iters)
    v_prev = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)  # rows before t = 0 are zero
    if N_TAPS > 1:
        if i_start > 0:  # a later chunk: regenerate the tile before it once
            v_prev = _noisy_tile(x_b, stride_xt, stride_xc, i_start - 1, length, cols, c_ok, groups, row0, C4,
                                 k0, k1, white_std, offset_row, BLOCK_T, BLOCK_C4, HAS_WHITE, HAS_OFFSET, FAST_MATH)
    for i in range(i_start, i_end):
        v = _noisy_tile(x_b, stride_xt, stride_xc, i, length, cols, c_ok, groups, row0, C4, k0, k1,
                        white_std, offset_row, BLOCK_T, BLOCK_C4, HAS_WHITE, HAS_OFFSET, FAST_MATH)
        if N_TAPS > 1:
            acc = tl.dot(w_cur, v, input_precision=DOT_PRECISION)
            acc = tl.dot(w_prev, v_prev, acc, input_precision=DOT_PRECISION)
            v_prev = v
        else:
            acc = v * tap0
        t_out = i * BLOCK_T - RIGHT + rows
        keep_row = t_out < length
        for m in range(n_tmasks):  # time masks of sample b: zero t in [start, start + width)
            start = tl.load(tmask_ptr + (b * n_tmasks + m) * 2)
            width = tl.load(tmask_ptr + (b * n_tmasks + m) * 2 + 1)
            keep_row = keep_row & ((t_out < start) | (t_out >= start + width))
        res = tl.where(keep_row[:, None] & keep_col[None, :], acc, 0.0)
        st = ((t_out >= 0) & (t_out < T))[:, None] & c_ok[None, :]
        tl.store(out_b + t_out.to(tl.int64)[:, None] * C + cols[None, :], res.to(out_ptr.dtype.element_ty), mask=st)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "stream"])
def normals_kernel(ctr_ptr, out_ptr, n, seed_lo, seed_hi, stream, BLOCK: tl.constexpr, FAST_MATH: tl.constexpr):
    """Debug/test kernel: the four normals of each int64 counter, written as out[i, 0..3]."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    ctr = tl.load(ctr_ptr + offs, mask=ok, other=0)
    z0, z1, z2, z3 = _normals4(ctr, stream.to(tl.uint32), seed_lo.to(tl.uint32), seed_hi.to(tl.uint32),
                               FAST_MATH)
    tl.store(out_ptr + offs * 4, z0, mask=ok)
    tl.store(out_ptr + offs * 4 + 1, z1, mask=ok)
    tl.store(out_ptr + offs * 4 + 2, z2, mask=ok)
    tl.store(out_ptr + offs * 4 + 3, z3, mask=ok)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi", "seed"])
def philox_words_kernel(ctr_ptr, out_ptr, ref_ptr, n, seed_lo, seed_hi, seed, BLOCK: tl.constexpr):
    """Test kernel: our Philox words (stream 0) and ``tl.randint4x(seed, ctr)``'s, as int64 (n, 4) each."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    ctr = tl.load(ctr_ptr + offs, mask=ok, other=0)
    c0 = ctr.to(tl.uint32)
    zero = c0 * 0
    i0, i1, i2, i3 = _philox4x32_10(c0, (ctr >> 32).to(tl.uint32), zero, zero,
                                    seed_lo.to(tl.uint32), seed_hi.to(tl.uint32))
    r0, r1, r2, r3 = tl.randint4x(seed, ctr)
    tl.store(out_ptr + offs * 4, i0.to(tl.int64), mask=ok)
    tl.store(out_ptr + offs * 4 + 1, i1.to(tl.int64), mask=ok)
    tl.store(out_ptr + offs * 4 + 2, i2.to(tl.int64), mask=ok)
    tl.store(out_ptr + offs * 4 + 3, i3.to(tl.int64), mask=ok)
    tl.store(ref_ptr + offs * 4, r0.to(tl.uint32, bitcast=True).to(tl.int64), mask=ok)
    tl.store(ref_ptr + offs * 4 + 1, r1.to(tl.uint32, bitcast=True).to(tl.int64), mask=ok)
    tl.store(ref_ptr + offs * 4 + 2, r2.to(tl.uint32, bitcast=True).to(tl.int64), mask=ok)
    tl.store(ref_ptr + offs * 4 + 3, r3.to(tl.uint32, bitcast=True).to(tl.int64), mask=ok)
