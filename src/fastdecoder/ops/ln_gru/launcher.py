"""Launch helpers of the LayerNorm-GRU kernels (``fastdecoder.kernels.ln_gru``): block sizes, warps, grids.

Imports triton; ``fastdecoder.ops.ln_gru`` imports it only when the Triton path runs.
"""
from __future__ import annotations

import torch
import triton

from fastdecoder.kernels import ln_gru as K

__all__ = ["ln_rows_fwd", "ln_rows_bwd", "gru_step_fwd", "gru_step_bwd", "block_and_warps"]


def block_and_warps(n: int) -> tuple[int, int]:
    """Power-of-two block covering ``n`` columns and a warp count for it (as Liger-Kernel's calculate_settings)."""
    block = triton.next_power_of_2(max(int(n), 1))
    if block >= 8192:
        warps = 16
    elif block >= 2048:
        warps = 8
    elif block >= 512:
        warps = 4
    else:
        warps = 2
    return block, warps


def _step_settings(H: int) -> tuple[int, int]:
    # the step kernels hold three H-vectors per quantity: warps sized for the 3H row (8 warps at H = 768 / 1024,
    # where sm_90 builds of the backward step use 80 registers and no spills; 4 warps would need 141)
    return triton.next_power_of_2(H), block_and_warps(3 * H)[1]


def ln_rows_fwd(p, g, bias, eps, ax, mean, rstd, b_per_m=None):
    """LN + gain + bias of every row of ``p`` (B, T, N) contiguous -> ``ax`` (T, B, N) and ``mean``/``rstd`` (B*T,).
    ``b_per_m``: members' rows (B = K * b_per_m; g, bias (K, N)); None: one member."""
    B, T, N = p.shape
    assert p.is_contiguous() and ax.is_contiguous() and ax.shape == (T, B, N)
    block, warps = block_and_warps(N)
    K.ln_rows_fwd_kernel[(B * T,)](
        p, ax, g, bias if bias is not None else g, mean, rstd,
        T, B, N, eps, *_members(b_per_m, B, N),
        HAS_BIAS=bias is not None, BLOCK_N=block, num_warps=warps,
    )


def ln_rows_bwd(da, p, mean, rstd, g, dp, n_programs: int):
    """LN backward over all rows: ``da``, ``p``, ``dp`` (R, N) contiguous; returns (dg, db) as fp32 (N,)."""
    R, N = p.shape
    assert da.is_contiguous() and p.is_contiguous() and dp.is_contiguous()
    n_programs = max(1, min(int(n_programs), R))
    rows_per_prog = triton.cdiv(R, n_programs)
    n_programs = triton.cdiv(R, rows_per_prog)
    dg_part = torch.empty(n_programs, N, dtype=torch.float32, device=p.device)
    db_part = torch.empty(n_programs, N, dtype=torch.float32, device=p.device)
    block, warps = block_and_warps(N)
    K.ln_rows_bwd_kernel[(n_programs,)](
        da, p, mean, rstd, g, dp, dg_part, db_part,
        R, rows_per_prog, N,
        BLOCK_N=block, num_warps=warps,
    )
    return dg_part.sum(0), db_part.sum(0)


def _members(b_per_m, B: int, N: int) -> tuple[int, int]:
    """The kernels' (rows per member, gain elements per member): (B, 0) for one member."""
    return (B, 0) if b_per_m is None else (int(b_per_m), N)


def gru_step_fwd(ax, ax_off, hh, hh_off, hp, hp_off, s_hp_b, out, out_off, s_out_b, hc, g, bias,
                 mean, rstd, st_off, B, H, eps, b_per_m=None):
    """One forward step for all B rows (see ``kernels.ln_gru.gru_step_fwd_kernel``; ``*_off`` are element offsets into the
    base tensors, rows of ``ax`` / ``hh`` are 3H apart)."""
    block, warps = _step_settings(H)
    K.gru_step_fwd_kernel[(B,)](
        ax, ax_off, 3 * H,
        hh, hh_off, 3 * H,
        hp, hp_off, s_hp_b,
        out, out_off, s_out_b,
        hc if hc is not None else out,
        g, bias if bias is not None else g,
        mean, rstd, st_off,
        H, eps, *_members(b_per_m, B, 3 * H),
        HAS_BIAS=bias is not None, WRITE_CAST=hc is not None, BLOCK_H=block, num_warps=warps,
    )


def gru_step_bwd(p, p_off, s_p_b, mx, rx, sx_off, s_sx_b, gi, bi,
                 hh, hh_off, mh, rh, st_off, gh, bh,
                 hp, hp_off, s_hp_b, dout, do_off, s_do_b, dcarry, gmm,
                 da, da_off, s_da_b, dhh, dhh_off, dg_acc, db_acc, B, H, b_per_m=None):
    """One backward step for all B rows (see ``kernels.ln_gru.gru_step_bwd_kernel``; ``b_per_m`` as in
    ``ln_rows_fwd``)."""
    block, warps = _step_settings(H)
    has_bias = bi is not None
    K.gru_step_bwd_kernel[(B,)](
        p, p_off, s_p_b,
        mx, rx, sx_off, s_sx_b,
        gi, bi if has_bias else gi,
        hh, hh_off, 3 * H,
        mh, rh, st_off,
        gh, bh if has_bias else gh,
        hp, hp_off, s_hp_b,
        dout, do_off, s_do_b,
        dcarry, gmm,
        da, da_off, s_da_b,
        dhh, dhh_off, 3 * H,
        dg_acc, db_acc if has_bias else dg_acc,
        H, *_members(b_per_m, B, 3 * H),
        HAS_BIAS=has_bias, BLOCK_H=block, num_warps=warps,
    )
