"""Triton kernels of the LayerNorm-GRU (haste-style: layer norm over the 3H pre-activations of each side).

Definition, per layer and direction (gate order r, z, n as in ``torch.nn.GRU``; LN without its own bias, eps 1e-5)::

    a_x = LN(x_t W_ih^T) * g_ih + b_ih          # LN over the 3H input pre-activations
    a_h = LN(h_{t-1} W_hh^T) * g_hh + b_hh      # LN over the 3H recurrent pre-activations
    r = sigmoid(a_x[r] + a_h[r])
    z = sigmoid(a_x[z] + a_h[z])
    n = tanh(a_x[n] + r * a_h[n])
    h_t = (1 - z) * n + z * h_{t-1}

Work split (the launchers in ``fastdecoder.ops.ln_gru.launcher`` start these kernels; the autograd Function in
``fastdecoder.ops.ln_gru.function`` calls them):

forward
    1. ``P = x W_ih^T`` for all steps: one GEMM (torch / cuBLAS).
    2. ``ln_rows_fwd``: LN + gain + bias of every row of P in one launch -> a_x (time-major) and (mean, rstd).
    3. per step: ``HH_t = h_{t-1} W_hh^T`` (torch GEMM), then ``gru_step_fwd``: LN statistics of HH_t, gates,
       h_t (written into the output sequence) and (mean, rstd) of HH_t. Nothing else is saved: the backward
       recomputes the gates from P, HH and the statistics.
backward (reverse time)
    4. per step: ``gru_step_bwd``: recompute the gates, back-propagate through the state update, the gates and
       the LN of HH_t -> dHH_t (stacked over time) and d(a_x)_t; ``dh_{t-1} = dh_t * z + dHH_t W_hh`` (the GEMM
       in torch, its sum in the next step's kernel); dg_hh, db_hh accumulate in per-row buffers (no atomics).
    5. after the loop: ``dW_hh = sum_t dHH_t^T h_{t-1}``: one GEMM over the stacked steps.
    6. ``ln_rows_bwd``: LN backward of every input row in one launch -> dP, and per-program partial sums of
       dg_ih, db_ih; then ``dW_ih = dP^T x`` and ``dx = dP W_ih``: two GEMMs.

Members (K independent layers of one shape, ``ops.ln_gru.members``): the rows of the forward kernels and the
step kernels are the K*B rows of all members, member-major; row b reads its member's (b // b_per_m) LN gains and
biases at ``s_g_m`` elements per member (solo: b_per_m = B, s_g_m = 0).

All arithmetic is fp32 whatever the storage dtypes (bf16 GEMM operands under autocast). Only the Triton API common
to triton 3.6 .. 3.9+ is used: plain pointer arithmetic and masks, no block pointers, no libdevice.
"""
from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["ln_rows_fwd_kernel", "ln_rows_bwd_kernel", "gru_step_fwd_kernel", "gru_step_bwd_kernel"]


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def _sigmoid(x):
    # 1 / (1 + e^-x): e^-x -> inf for x << 0 gives 0, no NaN
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # tanh(x) = sign(x) (1 - e^{-2|x|}) / (1 + e^{-2|x|}); no overflow, no libdevice (portable + interpreter)
    e = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -y, y)


# ----------------------------------------------------------------------------------------------------------------
# input side: LN of all rows of P = x W_ih^T, forward
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def ln_rows_fwd_kernel(
    P, AX, G, BIAS, MEAN, RSTD,
    T, B, N, eps, b_per_m, s_g_m,
    HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # one program per row of P (B*T rows of N = 3H, batch-major: row = b*T + t)
    #   mean = sum(p) / N;  rstd = 1 / sqrt(sum((p - mean)^2) / N + eps)
    #   a_x  = (p - mean) * rstd * g + b        written time-major: AX[t, b, :]
    row = tl.program_id(0)
    b = row // T
    t = row - b * T
    offs = tl.arange(0, BLOCK_N)
    mask = offs < N
    p = tl.load(P + row.to(tl.int64) * N + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(p, axis=0) / N
    d = tl.where(mask, p - mean, 0.0)
    var = tl.sum(d * d, axis=0) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    g_off = (b // b_per_m).to(tl.int64) * s_g_m               # this row's member's gain / bias
    g = tl.load(G + g_off + offs, mask=mask, other=0.0).to(tl.float32)
    a = d * rstd * g
    if HAS_BIAS:
        a += tl.load(BIAS + g_off + offs, mask=mask, other=0.0).to(tl.float32)
    out_row = t.to(tl.int64) * B + b
    tl.store(AX + out_row * N + offs, a.to(AX.dtype.element_ty), mask=mask)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


# ----------------------------------------------------------------------------------------------------------------
# input side: LN backward of all rows, with partial sums of the gain / bias gradients
# ----------------------------------------------------------------------------------------------------------------
@triton.jit
def ln_rows_bwd_kernel(
    DA, P, MEAN, RSTD, G, DP, DG_PART, DB_PART,
    n_rows, rows_per_prog, N,
    BLOCK_N: tl.constexpr,
):
    # program i handles rows [i * rows_per_prog, (i+1) * rows_per_prog); per row (xhat = (p - mean) * rstd):
    #   dxhat = da * g
    #   dp    = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    #   dg   += da * xhat;  db += da            (partials per program, summed by the caller)
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK_N)
    cmask = offs < N
    g = tl.load(G + offs, mask=cmask, other=0.0).to(tl.float32)
    dg = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for i in range(0, rows_per_prog):
        row = pid * rows_per_prog + i
        mask = cmask & ((offs * 0 + row) < n_rows)           # rows past the end: all lanes off (da = 0)
        srow = tl.minimum(row, n_rows - 1)                    # a valid row for the scalar loads
        base = row.to(tl.int64) * N
        da = tl.load(DA + base + offs, mask=mask, other=0.0).to(tl.float32)
        p = tl.load(P + base + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + srow)
        rstd = tl.load(RSTD + srow)
        xhat = tl.where(mask, (p - mean) * rstd, 0.0)
        dxhat = da * g
        c1 = tl.sum(dxhat * xhat, axis=0) / N
        c2 = tl.sum(dxhat, axis=0) / N
        dp = rstd * (dxhat - c2 - xhat * c1)
        tl.store(DP + base + offs, dp.to(DP.dtype.element_ty), mask=mask)
        dg += da * xhat
        db += da
    tl.store(DG_PART + pid * N + offs, dg, mask=cmask)
    tl.store(DB_PART + pid * N + offs, db, mask=cmask)


# ----------------------------------------------------------------------------------------------------------------
# recurrence, forward: one step
# ----------------------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["ax_off", "hh_off", "hp_off", "out_off", "st_off"])
def gru_step_fwd_kernel(
    AX, ax_off, s_ax_b,          # a_x at step t: AX + ax_off + b * s_ax_b + [0, 3H)      (fp32)
    HH, hh_off, s_hh_b,          # h_{t-1} W_hh^T at step t (pre-LN)
    HP, hp_off, s_hp_b,          # h_{t-1} (h0 or the output at the previous step)
    OUT, out_off, s_out_b,       # h_t (a column slice of the output sequence)
    HC,                          # (B, H) contiguous copy of h_t in the GEMM dtype (WRITE_CAST)
    G, BIAS,                     # (3H,) LN gain and bias of the recurrent side
    MEAN, RSTD, st_off,          # LN statistics of HH at step t: MEAN + st_off + b
    H, eps, b_per_m, s_g_m,      # rows per member, gain / bias elements per member (solo: B, 0)
    HAS_BIAS: tl.constexpr, WRITE_CAST: tl.constexpr, BLOCK_H: tl.constexpr,
):
    # one program per batch row; the 3H row is handled as three H-vectors (r, z, n)
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_H)
    mask = offs < H
    N = 3 * H
    g_off = (b // b_per_m) * s_g_m
    G += g_off
    BIAS += g_off

    hh_row = HH + hh_off + b * s_hh_b
    hr = tl.load(hh_row + offs, mask=mask, other=0.0).to(tl.float32)
    hz = tl.load(hh_row + H + offs, mask=mask, other=0.0).to(tl.float32)
    hn = tl.load(hh_row + 2 * H + offs, mask=mask, other=0.0).to(tl.float32)
    # LN statistics over the 3H recurrent pre-activations
    mean = (tl.sum(hr, axis=0) + tl.sum(hz, axis=0) + tl.sum(hn, axis=0)) / N
    hr = tl.where(mask, hr - mean, 0.0)
    hz = tl.where(mask, hz - mean, 0.0)
    hn = tl.where(mask, hn - mean, 0.0)
    var = (tl.sum(hr * hr, axis=0) + tl.sum(hz * hz, axis=0) + tl.sum(hn * hn, axis=0)) / N
    rstd = 1.0 / tl.sqrt(var + eps)
    # a_h = hhat * g + b
    ah_r = hr * rstd * tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    ah_z = hz * rstd * tl.load(G + H + offs, mask=mask, other=0.0).to(tl.float32)
    ah_n = hn * rstd * tl.load(G + 2 * H + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        ah_r += tl.load(BIAS + offs, mask=mask, other=0.0).to(tl.float32)
        ah_z += tl.load(BIAS + H + offs, mask=mask, other=0.0).to(tl.float32)
        ah_n += tl.load(BIAS + 2 * H + offs, mask=mask, other=0.0).to(tl.float32)

    ax_row = AX + ax_off + b * s_ax_b
    ax_r = tl.load(ax_row + offs, mask=mask, other=0.0).to(tl.float32)
    ax_z = tl.load(ax_row + H + offs, mask=mask, other=0.0).to(tl.float32)
    ax_n = tl.load(ax_row + 2 * H + offs, mask=mask, other=0.0).to(tl.float32)
    hp = tl.load(HP + hp_off + b * s_hp_b + offs, mask=mask, other=0.0).to(tl.float32)

    r = _sigmoid(ax_r + ah_r)
    z = _sigmoid(ax_z + ah_z)
    n = _tanh(ax_n + r * ah_n)
    h = (1.0 - z) * n + z * hp

    tl.store(OUT + out_off + b * s_out_b + offs, h.to(OUT.dtype.element_ty), mask=mask)
    if WRITE_CAST:
        tl.store(HC + b * H + offs, h.to(HC.dtype.element_ty), mask=mask)
    tl.store(MEAN + st_off + b, mean)
    tl.store(RSTD + st_off + b, rstd)


# ----------------------------------------------------------------------------------------------------------------
# recurrence, backward: one step
# ----------------------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["p_off", "sx_off", "hh_off", "st_off", "hp_off", "do_off", "da_off", "dhh_off"])
def gru_step_bwd_kernel(
    P, p_off, s_p_b,             # x_t W_ih^T (pre-LN) at step t
    MX, RX, sx_off, s_sx_b,      # its LN statistics: MX + sx_off + b * s_sx_b
    GI, BI,                      # LN gain / bias of the input side
    HH, hh_off, s_hh_b,          # h_{t-1} W_hh^T (pre-LN) at step t
    MH, RH, st_off,              # its LN statistics: MH + st_off + b
    GH, BH,                      # LN gain / bias of the recurrent side
    HP, hp_off, s_hp_b,          # h_{t-1}
    DO, do_off, s_do_b,          # dL/dh_t from the output sequence
    DC,                          # (B, H) fp32, in: dh_t carried from step t+1 (dh_{t+1} * z_{t+1}); out: dh_t * z_t
    GM,                          # (B, H) dHH_{t+1} W_hh (GEMM of the previous iteration; zeros at the first)
    DA, da_off, s_da_b,          # out: d a_x at step t (fp32)
    DHH, dhh_off, s_dhh_b,       # out: d HH_t (pre-LN), the GEMM dtype
    DG, DB,                      # (B, 3H) fp32 accumulators of dg_hh, db_hh (one row per program: no atomics)
    H, b_per_m, s_g_m,           # rows per member, gain / bias elements per member (solo: B, 0)
    HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_H)
    mask = offs < H
    N = 3 * H
    g_off = (b // b_per_m) * s_g_m
    GI += g_off
    BI += g_off
    GH += g_off
    BH += g_off

    # --- recompute a_x = (p - mx) * rx * g_ih + b_ih
    p_row = P + p_off + b * s_p_b
    mx = tl.load(MX + sx_off + b * s_sx_b)
    rx = tl.load(RX + sx_off + b * s_sx_b)
    ax_r = (tl.load(p_row + offs, mask=mask, other=0.0).to(tl.float32) - mx) * rx
    ax_z = (tl.load(p_row + H + offs, mask=mask, other=0.0).to(tl.float32) - mx) * rx
    ax_n = (tl.load(p_row + 2 * H + offs, mask=mask, other=0.0).to(tl.float32) - mx) * rx
    ax_r *= tl.load(GI + offs, mask=mask, other=0.0).to(tl.float32)
    ax_z *= tl.load(GI + H + offs, mask=mask, other=0.0).to(tl.float32)
    ax_n *= tl.load(GI + 2 * H + offs, mask=mask, other=0.0).to(tl.float32)
    # --- recompute hhat = (hh - mh) * rh and a_h = hhat * g_hh + b_hh
    hh_row = HH + hh_off + b * s_hh_b
    mh = tl.load(MH + st_off + b)
    rh = tl.load(RH + st_off + b)
    xr = tl.where(mask, (tl.load(hh_row + offs, mask=mask, other=0.0).to(tl.float32) - mh) * rh, 0.0)
    xz = tl.where(mask, (tl.load(hh_row + H + offs, mask=mask, other=0.0).to(tl.float32) - mh) * rh, 0.0)
    xn = tl.where(mask, (tl.load(hh_row + 2 * H + offs, mask=mask, other=0.0).to(tl.float32) - mh) * rh, 0.0)
    gh_r = tl.load(GH + offs, mask=mask, other=0.0).to(tl.float32)
    gh_z = tl.load(GH + H + offs, mask=mask, other=0.0).to(tl.float32)
    gh_n = tl.load(GH + 2 * H + offs, mask=mask, other=0.0).to(tl.float32)
    ah_r = xr * gh_r
    ah_z = xz * gh_z
    ah_n = xn * gh_n
    if HAS_BIAS:
        ax_r += tl.load(BI + offs, mask=mask, other=0.0).to(tl.float32)
        ax_z += tl.load(BI + H + offs, mask=mask, other=0.0).to(tl.float32)
        ax_n += tl.load(BI + 2 * H + offs, mask=mask, other=0.0).to(tl.float32)
        ah_r += tl.load(BH + offs, mask=mask, other=0.0).to(tl.float32)
        ah_z += tl.load(BH + H + offs, mask=mask, other=0.0).to(tl.float32)
        ah_n += tl.load(BH + 2 * H + offs, mask=mask, other=0.0).to(tl.float32)
    r = _sigmoid(ax_r + ah_r)
    z = _sigmoid(ax_z + ah_z)
    n = _tanh(ax_n + r * ah_n)
    hp = tl.load(HP + hp_off + b * s_hp_b + offs, mask=mask, other=0.0).to(tl.float32)

    # --- dh_t = dL/dout_t + dh_{t+1} z_{t+1} + dHH_{t+1} W_hh
    dc_row = DC + b * H
    dh = tl.load(DO + do_off + b * s_do_b + offs, mask=mask, other=0.0).to(tl.float32)
    dh += tl.load(dc_row + offs, mask=mask, other=0.0)
    dh += tl.load(GM + b * H + offs, mask=mask, other=0.0).to(tl.float32)
    # h_t = (1 - z) n + z h_{t-1}
    tl.store(dc_row + offs, dh * z, mask=mask)              # direct path to h_{t-1}
    dn = dh * (1.0 - z)
    dz = dh * (hp - n)
    # n = tanh(a_x[n] + r a_h[n]);  r, z = sigmoid(.)
    dpn = tl.where(mask, dn * (1.0 - n * n), 0.0)
    dpr = tl.where(mask, dpn * ah_n * r * (1.0 - r), 0.0)
    dpz = tl.where(mask, dz * z * (1.0 - z), 0.0)
    dahn = dpn * r

    da_row = DA + da_off + b * s_da_b
    tl.store(da_row + offs, dpr, mask=mask)
    tl.store(da_row + H + offs, dpz, mask=mask)
    tl.store(da_row + 2 * H + offs, dpn, mask=mask)

    # --- gain / bias of LN_hh: dg += da_h * hhat, db += da_h (this program's own row of the accumulators)
    dg_row = DG + b * N
    tl.store(dg_row + offs, tl.load(dg_row + offs, mask=mask, other=0.0) + dpr * xr, mask=mask)
    tl.store(dg_row + H + offs, tl.load(dg_row + H + offs, mask=mask, other=0.0) + dpz * xz, mask=mask)
    tl.store(dg_row + 2 * H + offs, tl.load(dg_row + 2 * H + offs, mask=mask, other=0.0) + dahn * xn, mask=mask)
    if HAS_BIAS:
        db_row = DB + b * N
        tl.store(db_row + offs, tl.load(db_row + offs, mask=mask, other=0.0) + dpr, mask=mask)
        tl.store(db_row + H + offs, tl.load(db_row + H + offs, mask=mask, other=0.0) + dpz, mask=mask)
        tl.store(db_row + 2 * H + offs, tl.load(db_row + 2 * H + offs, mask=mask, other=0.0) + dahn, mask=mask)

    # --- LN backward: dhh = rh * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = da_h * g_hh
    d_r = dpr * gh_r
    d_z = dpz * gh_z
    d_n = dahn * gh_n
    c1 = (tl.sum(d_r * xr, axis=0) + tl.sum(d_z * xz, axis=0) + tl.sum(d_n * xn, axis=0)) / N
    c2 = (tl.sum(d_r, axis=0) + tl.sum(d_z, axis=0) + tl.sum(d_n, axis=0)) / N
    dhh_row = DHH + dhh_off + b * s_dhh_b
    ty = DHH.dtype.element_ty
    tl.store(dhh_row + offs, (rh * (d_r - c2 - xr * c1)).to(ty), mask=mask)
    tl.store(dhh_row + H + offs, (rh * (d_z - c2 - xz * c1)).to(ty), mask=mask)
    tl.store(dhh_row + 2 * H + offs, (rh * (d_n - c2 - xn * c1)).to(ty), mask=mask)
