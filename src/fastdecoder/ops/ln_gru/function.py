"""Triton path of the LayerNorm-GRU: the autograd Function of one layer (both directions), forward and backward
over the launchers of ``launcher.py`` (kernels in ``fastdecoder.kernels.ln_gru``, imported lazily: importing this
module does not import triton); the definition is in ``reference.py``.

Buffers of one layer and direction (B batch, T steps, H hidden, N = 3H; ``cdt`` the GEMM dtype: bf16 under autocast,
else the input dtype; ``sdt`` the dtype of the state and the output: fp32 under autocast, else the input dtype):

============  ===========  =====  ==========================================================================
name          shape        dtype  role
============  ===========  =====  ==========================================================================
p             (B, T, N)    cdt    x W_ih^T (one GEMM), saved
mean/rstd_x   (B*T,)       fp32   LN statistics of p, saved
ax            (T, B, N)    fp32   LN(p) * g_ih + b_ih, time-major, forward only
hh            (T, B, N)    cdt    h_{t-1} W_hh^T, one GEMM per step, saved
mean/rstd_h   (T, B)       fp32   LN statistics of hh, saved
out           (B, T, D*H)  sdt    the output sequence (h_t of both directions side by side), saved
============  ===========  =====  ==========================================================================

The gates are not saved: the backward kernel recomputes them from p, hh and the statistics (cheap, and it halves
the activation memory of the recurrence).
"""
from __future__ import annotations

import torch

from fastdecoder.ops.ln_gru.reference import N_PARAMS

_N_SAVED = 6  # buffers saved per direction for the backward: p, mean_x, rstd_x, hh, mean_h, rstd_h


def _kernels():
    import fastdecoder.ops.ln_gru.launcher as launcher  # imports triton

    return launcher


def _ln_bwd_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def _time_order(d: int, T: int):
    """Time indices in processing order and the previous index of each (-1: the initial state)."""
    if d == 0:
        return [(t, t - 1) for t in range(T)]
    return [(t, t + 1 if t + 1 < T else -1) for t in range(T - 1, -1, -1)]


class LNGRULayerFunction(torch.autograd.Function):
    """One LayerNorm-GRU layer, all directions: ``(x (B,T,I), h0 (D,B,H), params) -> (out (B,T,D*H), h_n (D,B,H))``.

    ``params`` is the flat list of D groups ``(weight_ih, weight_hh, bias_ih, bias_hh, ln_ih_weight, ln_hh_weight)``
    (biases may be None). Call it through :func:`ln_gru_layer_triton`, which settles the dtypes and autocast.
    """

    @staticmethod
    def forward(ctx, x, h0, eps, cdt, sdt, *params):
        K = _kernels()
        B, T, I = x.shape
        D = len(params) // N_PARAMS
        H = params[1].shape[1]
        N = 3 * H
        dev = x.device
        f32 = torch.float32
        ctx.x_dtype, ctx.h0_dtype = x.dtype, h0.dtype
        x_c = x.to(cdt).contiguous()
        h0 = h0.to(sdt).contiguous()
        out = torch.empty(B, T, D * H, device=dev, dtype=sdt)
        h_n = torch.empty(D, B, H, device=dev, dtype=sdt)
        s_out_b, s_out_t = out.stride(0), out.stride(1)
        cast = cdt != sdt
        hc = torch.empty(B, H, device=dev, dtype=cdt) if cast else None
        saved = []
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh, g_ih, g_hh = params[N_PARAMS * d: N_PARAMS * (d + 1)]
            # input side for all steps: one GEMM + one LN kernel
            p = torch.matmul(x_c, w_ih.to(cdt).t()).contiguous()              # (B, T, N)
            ax = torch.empty(T, B, N, device=dev, dtype=f32)
            mean_x = torch.empty(B * T, device=dev, dtype=f32)
            rstd_x = torch.empty(B * T, device=dev, dtype=f32)
            K.ln_rows_fwd(p, g_ih, b_ih, eps, ax, mean_x, rstd_x)
            # recurrence: per step one GEMM + one fused kernel
            hh = torch.empty(T, B, N, device=dev, dtype=cdt)
            mean_h = torch.empty(T, B, device=dev, dtype=f32)
            rstd_h = torch.empty(T, B, device=dev, dtype=f32)
            w_hh_t = w_hh.to(cdt).t()
            h0_d = h0[d]
            h0_c = h0_d.to(cdt)
            col = d * H
            out_steps = out[..., col:col + H].unbind(1)                          # T views (B, H)
            hh_steps = hh.unbind(0)
            for t, prev in _time_order(d, T):
                if prev < 0:
                    hp, hp_off, s_hp_b, hp_c = h0_d, 0, H, h0_c
                else:
                    hp, hp_off, s_hp_b = out, prev * s_out_t + col, s_out_b
                    hp_c = hc if cast else out_steps[prev]
                torch.mm(hp_c, w_hh_t, out=hh_steps[t])                         # HH_t = h_{t-1} W_hh^T
                K.gru_step_fwd(ax, t * B * N, hh, t * B * N, hp, hp_off, s_hp_b,
                               out, t * s_out_t + col, s_out_b, hc, g_hh, b_hh,
                               mean_h, rstd_h, t * B, B, H, eps)
            h_n[d] = out_steps[T - 1 if d == 0 else 0]
            saved += [p, mean_x, rstd_x, hh, mean_h, rstd_h]
            del ax
        ctx.save_for_backward(x_c, h0, out, *params, *saved)
        ctx.dims = (B, T, I, D, H)
        ctx.cdt, ctx.sdt = cdt, sdt
        ctx.has_bias = params[2] is not None
        return out, h_n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dh_n):
        K = _kernels()
        B, T, I, D, H = ctx.dims
        N = 3 * H
        cdt = ctx.cdt
        f32 = torch.float32
        x_c, h0, out, *rest = ctx.saved_tensors
        params = rest[: N_PARAMS * D]
        saved = rest[N_PARAMS * D:]
        dev = out.device
        dout = torch.zeros_like(out) if dout is None else dout.contiguous()
        dh_n = torch.zeros(D, B, H, device=dev, dtype=f32) if dh_n is None else dh_n
        s_do_b, s_do_t = dout.stride(0), dout.stride(1)
        s_out_b, s_out_t = out.stride(0), out.stride(1)
        need = ctx.needs_input_grad
        has_bias = ctx.has_bias
        dx2 = None
        dh0 = torch.empty(D, B, H, device=dev, dtype=f32)
        dparams = [None] * len(params)
        n_prog = _ln_bwd_programs(dev)
        for d in range(D):
            w_ih, w_hh, b_ih, b_hh, g_ih, g_hh = params[N_PARAMS * d: N_PARAMS * (d + 1)]
            p, mean_x, rstd_x, hh, mean_h, rstd_h = saved[_N_SAVED * d: _N_SAVED * (d + 1)]
            col = d * H
            da = torch.empty(B, T, N, device=dev, dtype=f32)                    # d a_x, batch-major like p
            dhh = torch.empty(T, B, N, device=dev, dtype=cdt)                  # d HH, time-major like hh
            dcarry = dh_n[d].to(f32).contiguous().clone()                       # dh_T enters the carried term
            gmm = torch.zeros(B, H, device=dev, dtype=cdt)
            dg_acc = torch.zeros(B, N, device=dev, dtype=f32)
            db_acc = torch.zeros(B, N, device=dev, dtype=f32) if has_bias else None
            w_hh_c = w_hh.to(cdt)
            h0_d = h0[d]
            dhh_steps = dhh.unbind(0)
            for t, prev in reversed(_time_order(d, T)):
                if prev < 0:
                    hp, hp_off, s_hp_b = h0_d, 0, H
                else:
                    hp, hp_off, s_hp_b = out, prev * s_out_t + col, s_out_b
                K.gru_step_bwd(p, t * N, T * N, mean_x, rstd_x, t, T, g_ih, b_ih,
                               hh, t * B * N, mean_h, rstd_h, t * B, g_hh, b_hh,
                               hp, hp_off, s_hp_b, dout, t * s_do_t + col, s_do_b, dcarry, gmm,
                               da, t * N, T * N, dhh, t * B * N, dg_acc, db_acc, B, H)
                torch.mm(dhh_steps[t], w_hh_c, out=gmm)                          # dHH_t W_hh -> dh_{t-1}
            dh0[d] = dcarry + gmm
            base = N_PARAMS * d
            # recurrent weights: dW_hh = sum_t dHH_t^T h_{t-1}, one GEMM over the stacked steps
            if need[5 + base + 1]:
                out_tm = out[..., col:col + H].transpose(0, 1)                 # (T, B, H) view
                if d == 0:
                    hprev = torch.cat([h0_d[None], out_tm[:-1]])
                else:
                    hprev = torch.cat([out_tm[1:], h0_d[None]])
                hprev = hprev.to(cdt).view(T * B, H)
                dparams[base + 1] = torch.mm(dhh.view(T * B, N).t(), hprev).to(w_hh.dtype)
            dparams[base + 5] = dg_acc.sum(0).to(g_hh.dtype)
            if has_bias:
                dparams[base + 3] = db_acc.sum(0).to(b_hh.dtype)
            del dhh, dg_acc, db_acc
            # input side: LN backward of all rows in one kernel, then dW_ih and dx as two GEMMs
            dp = da if cdt == f32 else torch.empty(B, T, N, device=dev, dtype=cdt)
            dg_ih, db_ih = K.ln_rows_bwd(da.view(B * T, N), p.view(B * T, N), mean_x, rstd_x, g_ih,
                                         dp.view(B * T, N), n_prog)
            dp2 = dp.view(B * T, N)
            dparams[base + 4] = dg_ih.to(g_ih.dtype)
            if has_bias:
                dparams[base + 2] = db_ih.to(b_ih.dtype)
            if need[5 + base]:
                dparams[base] = torch.mm(dp2.t(), x_c.view(B * T, I)).to(w_ih.dtype)
            if need[0]:
                # the directions' terms are summed in fp32 (as autograd sums the reference's per-direction grads)
                dxd = torch.mm(dp2, w_ih.to(cdt))
                dx2 = (dxd if cdt == f32 else dxd.float()) if dx2 is None else dx2.add_(dxd)
        dx = dx2.view(B, T, I).to(ctx.x_dtype) if dx2 is not None else None
        dh0 = dh0.to(ctx.h0_dtype) if need[1] else None
        return (dx, dh0, None, None, None, *dparams)


@torch.compiler.disable
def ln_gru_layer_triton(x: torch.Tensor, h0: torch.Tensor, params, eps: float):
    """One layer, all directions, on the Triton path. ``x`` (B, T, I), ``h0`` (D, B, H); returns (out, h_n).

    Under autocast the GEMMs run in the autocast dtype and the state, the LN and gate arithmetic and the output
    stay in fp32 (as the reference under autocast: ``layer_norm`` autocasts to fp32). ``torch.compile`` sees a
    graph break here (a Python loop of kernel launches is not worth tracing).
    """
    return _apply_outside_autocast(LNGRULayerFunction, x, h0, params, eps)


def _apply_outside_autocast(fn, x, h0, params, eps: float):
    """``fn.apply`` with autocast off and the compute / state dtypes it would have chosen: under autocast the GEMMs
    in the autocast dtype and the state, LN and gate arithmetic in fp32; else both ``x``'s dtype."""
    dev_type = x.device.type
    if torch.is_autocast_enabled(dev_type):
        cdt, sdt = torch.get_autocast_dtype(dev_type), torch.float32
    else:
        cdt = sdt = x.dtype
    with torch.autocast(dev_type, enabled=False):
        return fn.apply(x, h0, float(eps), cdt, sdt, *params)


class MembersLNGRULayerFunction(torch.autograd.Function):
    """One unidirectional LayerNorm-GRU layer of K members (``ops.ln_gru.members``): ``(x (K,B,T,I), h0 (K,B,H),
    w_ih (K,N,I), w_hh (K,N,H), b_ih, b_hh (K,N) or None, g_ih, g_hh (K,N)) -> out (K,B,T,H)``.

    The solo layer's scheme with the members' K*B rows in the kernels (each row reads its member's gains and
    biases); the GEMMs are batched over members: the input projection, per step (K,B,H) @ (K,H,N), dW_hh, dW_ih
    and dx. Buffers as in ``LNGRULayerFunction`` with B -> K*B (member-major rows).
    """

    @staticmethod
    def forward(ctx, x, h0, eps, cdt, sdt, *params):
        Kn = _kernels()
        K, B, T, I = x.shape
        w_ih, w_hh, b_ih, b_hh, g_ih, g_hh = params
        H = w_hh.shape[2]
        N, R = 3 * H, K * B
        dev, f32 = x.device, torch.float32
        ctx.x_dtype, ctx.h0_dtype = x.dtype, h0.dtype
        x_c = x.to(cdt).contiguous()
        h0 = h0.to(sdt).contiguous().view(R, H)
        out = torch.empty(R, T, H, device=dev, dtype=sdt)
        s_out_b, s_out_t = out.stride(0), out.stride(1)
        cast = cdt != sdt
        hc = torch.empty(R, H, device=dev, dtype=cdt) if cast else None
        # input side for all steps and members: one batched GEMM + one LN kernel over the K*B*T rows
        p = torch.bmm(x_c.view(K, B * T, I), w_ih.to(cdt).transpose(1, 2)).view(R, T, N)
        ax = torch.empty(T, R, N, device=dev, dtype=f32)
        mean_x = torch.empty(R * T, device=dev, dtype=f32)
        rstd_x = torch.empty(R * T, device=dev, dtype=f32)
        g_ih, g_hh = g_ih.contiguous(), g_hh.contiguous()
        b_ih = b_ih.contiguous() if b_ih is not None else None
        b_hh = b_hh.contiguous() if b_hh is not None else None
        Kn.ln_rows_fwd(p, g_ih, b_ih, eps, ax, mean_x, rstd_x, b_per_m=B)
        hh = torch.empty(T, R, N, device=dev, dtype=cdt)
        mean_h = torch.empty(T, R, device=dev, dtype=f32)
        rstd_h = torch.empty(T, R, device=dev, dtype=f32)
        w_hh_t = w_hh.to(cdt).transpose(1, 2)                                  # (K, H, N)
        h0_c = h0.to(cdt)
        out_steps = out.unbind(1)                                               # T views (R, H)
        for t in range(T):
            if t == 0:
                hp, hp_off, s_hp_b, hp_c = h0, 0, H, h0_c
            else:
                hp, hp_off, s_hp_b = out, (t - 1) * s_out_t, s_out_b
                hp_c = hc if cast else out_steps[t - 1]
            torch.bmm(hp_c.view(K, B, H), w_hh_t, out=hh[t].view(K, B, N))     # HH_t = h_{t-1} W_hh^T
            Kn.gru_step_fwd(ax, t * R * N, hh, t * R * N, hp, hp_off, s_hp_b, out, t * s_out_t, s_out_b, hc,
                            g_hh, b_hh, mean_h, rstd_h, t * R, R, H, eps, b_per_m=B)
        del ax
        ctx.save_for_backward(x_c, h0, out, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, p, mean_x, rstd_x, hh, mean_h,
                              rstd_h)
        ctx.dims = (K, B, T, I, H)
        ctx.cdt = cdt
        return out.view(K, B, T, H)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        Kn = _kernels()
        K, B, T, I, H = ctx.dims
        N, R = 3 * H, K * B
        cdt, f32 = ctx.cdt, torch.float32
        x_c, h0, out, w_ih, w_hh, b_ih, b_hh, g_ih, g_hh, p, mean_x, rstd_x, hh, mean_h, rstd_h = ctx.saved_tensors
        dev = out.device
        dout = dout.contiguous().view(R, T, H)
        s_do_b, s_do_t = dout.stride(0), dout.stride(1)
        s_out_b, s_out_t = out.stride(0), out.stride(1)
        need = ctx.needs_input_grad
        has_bias = b_ih is not None
        da = torch.empty(R, T, N, device=dev, dtype=f32)
        dhh = torch.empty(T, R, N, device=dev, dtype=cdt)
        dcarry = torch.zeros(R, H, device=dev, dtype=f32)
        gmm = torch.zeros(R, H, device=dev, dtype=cdt)
        dg_acc = torch.zeros(R, N, device=dev, dtype=f32)
        db_acc = torch.zeros(R, N, device=dev, dtype=f32) if has_bias else None
        w_hh_c = w_hh.to(cdt)
        for t in range(T - 1, -1, -1):
            if t == 0:
                hp, hp_off, s_hp_b = h0, 0, H
            else:
                hp, hp_off, s_hp_b = out, (t - 1) * s_out_t, s_out_b
            Kn.gru_step_bwd(p, t * N, T * N, mean_x, rstd_x, t, T, g_ih, b_ih,
                            hh, t * R * N, mean_h, rstd_h, t * R, g_hh, b_hh,
                            hp, hp_off, s_hp_b, dout, t * s_do_t, s_do_b, dcarry, gmm,
                            da, t * N, T * N, dhh, t * R * N, dg_acc, db_acc, R, H, b_per_m=B)
            torch.bmm(dhh[t].view(K, B, N), w_hh_c, out=gmm.view(K, B, H))     # dHH_t W_hh -> dh_{t-1}
        dh0 = (dcarry + gmm).view(K, B, H)
        grads = [None] * 6
        if need[6]:  # dW_hh = sum_t dHH_t^T h_{t-1} per member: one batched GEMM over the stacked steps
            hprev = torch.cat([h0.view(1, R, H), out.transpose(0, 1)[:-1]]).to(cdt)          # (T, R, H)
            hprev = hprev.view(T, K, B, H).transpose(0, 1).reshape(K, T * B, H)
            g_rows = dhh.view(T, K, B, N).transpose(0, 1).reshape(K, T * B, N)
            grads[1] = torch.bmm(g_rows.transpose(1, 2), hprev).to(w_hh.dtype)
        grads[5] = dg_acc.view(K, B, N).sum(1).to(g_hh.dtype)
        if has_bias:
            grads[3] = db_acc.view(K, B, N).sum(1).to(b_hh.dtype)
        del dhh, dg_acc, db_acc
        # input side: the LN backward per member (its gains; its own partial sums), then dW_ih and dx batched
        dp = da if cdt == f32 else torch.empty(R, T, N, device=dev, dtype=cdt)
        da_m, p_m, dp_m = (t.view(K, B * T, N) for t in (da, p, dp))
        mx_m, rx_m = mean_x.view(K, B * T), rstd_x.view(K, B * T)
        dg_ih, db_ih = [], []
        for k in range(K):
            dg, db = Kn.ln_rows_bwd(da_m[k], p_m[k], mx_m[k], rx_m[k], g_ih[k], dp_m[k], _ln_bwd_programs(dev))
            dg_ih.append(dg)
            db_ih.append(db)
        grads[4] = torch.stack(dg_ih).to(g_ih.dtype)
        if has_bias:
            grads[2] = torch.stack(db_ih).to(b_ih.dtype)
        if need[5]:
            grads[0] = torch.bmm(dp_m.transpose(1, 2), x_c.view(K, B * T, I)).to(w_ih.dtype)
        dx = None
        if need[0]:
            dx = torch.bmm(dp_m, w_ih.to(cdt)).view(K, B, T, I).to(ctx.x_dtype)
        return (dx, dh0.to(ctx.h0_dtype) if need[1] else None, None, None, None, *grads)


@torch.compiler.disable
def members_ln_gru_layer_triton(x: torch.Tensor, h0: torch.Tensor, params, eps: float) -> torch.Tensor:
    """K members' unidirectional layer on the Triton path: x (K, B, T, I), h0 (K, B, H), ``params`` the 6
    member-stacked tensors -> out (K, B, T, H). Dtypes and autocast as ``ln_gru_layer_triton``."""
    return _apply_outside_autocast(MembersLNGRULayerFunction, x, h0, params, eps)
