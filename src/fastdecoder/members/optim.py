"""Adam / AdamW over stacked (K, ...) parameters with per-member learning rates, eps and weight decay, per-member
step counts and a per-member apply mask (a member whose step is skipped keeps its weights, moments and count).

Member k's update is torch.optim.AdamW's (or Adam's, coupled L2) single-tensor step with member k's hyperparameters:
the per-member scalars are computed in double on the host as torch computes its Python scalars and enter the same
elementwise ops as (K, 1, ...) float32 tensors, so member k equals a solo torch optimizer to fp32 round-off.
Hyperparameters come per step as (K,) host lists: ``lr[g][k]`` and ``weight_decay[g][k]`` per group g, ``eps[k]``.
"""
from __future__ import annotations

import torch


class MemberAdam:
    """``params``: the stacked parameters; ``groups``: the group index of each parameter (the solo run's groups:
    main, no_decay, day); ``decoupled``: AdamW (True) or Adam with coupled L2 decay."""

    def __init__(self, params: list[torch.nn.Parameter], groups: list[int], k: int, betas: tuple[float, float],
                 decoupled: bool = True):
        self.params = list(params)
        self.groups = list(groups)
        self.k = k
        self.betas = (float(betas[0]), float(betas[1]))
        self.decoupled = decoupled
        self.steps = [0] * k  # Adam's step count per member
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        # two scratch buffers the size of the largest parameter, reused by every step (the update's temporaries
        # would otherwise be fresh allocations of K members' worth each step)
        n = max((p.numel() for p in self.params), default=0)
        like = dict(device=self.params[0].device, dtype=self.params[0].dtype) if self.params else {}
        self._scratch = (torch.empty(n, **like), torch.empty(n, **like))

    def _temporaries(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two scratch tensors shaped like ``p`` (views of the step's reused buffers)."""
        return tuple(b[:p.numel()].view(p.shape) for b in self._scratch)

    def _col(self, values: list[float], p: torch.Tensor) -> torch.Tensor:
        """(K,) host values -> a (K, 1, ...) float32 tensor broadcasting over a member's slice of ``p``."""
        return torch.tensor(values, dtype=torch.float32, device=p.device).view(self.k, *([1] * (p.dim() - 1)))

    @torch.no_grad()
    def step(self, lr: list[list[float]], weight_decay: list[list[float]], eps: list[float], apply: list[bool]) -> None:
        """One update of the members with ``apply[k]``; the others are left exactly as they were."""
        beta1, beta2 = self.betas
        K = self.k
        on = [k for k in range(K) if apply[k]]
        if not on:
            return
        for k in on:
            self.steps[k] += 1
        # the host scalars of each member's step (torch's single-tensor Adam(W) computes them in double)
        # (members that never stepped get placeholders: their rows are restored below)
        bc1 = [1 - beta1 ** self.steps[k] if self.steps[k] else 1.0 for k in range(K)]
        bc2_sqrt = [(1 - beta2 ** self.steps[k]) ** 0.5 if self.steps[k] else 1.0 for k in range(K)]
        off = [k for k in range(K) if not apply[k]]
        for p, m, v, g in zip(self.params, self.exp_avg, self.exp_avg_sq, self.groups):
            if p.grad is None:
                continue
            keep = [(k, p[k].clone(), m[k].clone(), v[k].clone()) for k in off]
            grad = p.grad
            lr_g, wd_g = lr[g], weight_decay[g]
            if self.decoupled:
                p.mul_(self._col([1 - lr_g[k] * wd_g[k] for k in range(K)], p))
            elif any(wd_g):
                grad = grad.add(p * self._col(wd_g, p))
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom, step = self._temporaries(p)
            torch.sqrt(v, out=denom).div_(self._col(bc2_sqrt, p)).add_(self._col(eps, p))
            p.addcdiv_(torch.mul(m, self._col([-(lr_g[k] / bc1[k]) for k in range(K)], p), out=step), denom)
            for k, p_k, m_k, v_k in keep:  # skipped members: exactly as before (their grads may be NaN)
                p[k].copy_(p_k)
                m[k].copy_(m_k)
                v[k].copy_(v_k)

    def member_state(self, k: int) -> list[dict | None]:
        """Member k's state per parameter as torch's Adam(W) keeps it (None before its first step)."""
        if self.steps[k] == 0:
            return [None] * len(self.params)
        return [{"step": torch.tensor(float(self.steps[k])), "exp_avg": m[k].clone(), "exp_avg_sq": v[k].clone()}
                for m, v in zip(self.exp_avg, self.exp_avg_sq)]

    @torch.no_grad()
    def load_member_state(self, k: int, states: list[dict | None]) -> None:
        """Set member k's state from ``member_state``'s form (None: no step yet)."""
        if len(states) != len(self.params):
            raise ValueError(f"member {k}: optimizer state for {len(states)} parameters, the model has "
                             f"{len(self.params)}")
        steps = set()
        for m, v, s in zip(self.exp_avg, self.exp_avg_sq, states):
            if s is None:
                m[k].zero_()
                v[k].zero_()
                steps.add(0)
            else:
                m[k].copy_(s["exp_avg"])
                v[k].copy_(s["exp_avg_sq"])
                steps.add(int(float(s["step"])))
        if len(steps) > 1:
            raise ValueError(f"member {k}: its parameters' optimizer step counts differ ({sorted(steps)})")
        self.steps[k] = steps.pop() if steps else 0
