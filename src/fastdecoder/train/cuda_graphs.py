"""CUDA graphs of the fast step (``train.cuda_graphs``, off by default and in the presets until the GPU check has
measured them): per input shape (one per length bucket) the model's forward and backward are captured once with
``torch.cuda.make_graphed_callables`` and replayed every later step of that shape.

Captured: the model's forward under the run's autocast (with its cache off, as make_graphed_callables requires) --
day layer, dropout, patching, (LayerNorm-)GRU, head -- and its backward, which writes every parameter's gradient.
The batch is copied into the capture's static input tensors (x, day, lengths and the day-group index tensors of
ops.day_affine) by make_graphed_callables on each replay. Eager around the graph, as before:
  - the augmentation: its noise comes from the run's own RNG streams and its random cut is known on the host;
  - F.ctc_loss and its backward: its length tensors are host copies whose values change every step (a graph would
    bake in the captured ones), so the loss stays outside and feeds the captured backward its logits' gradient;
  - grad norm, clipping, the device-side skip flag and the fused AdamW step (the capturable AdamW is not used:
    unverified on a GPU so far).
Dropout in a graph draws fresh masks at each replay through the CUDA generator's graph-safe philox offsets; cuDNN's
RNN dropout keeps its own state buffer. Both are probed once at the first capture on the run's device (a tiny
module captured and replayed twice on the same input must give different outputs); where a probe's masks repeat,
the run stops with a UserError naming the dropout key to change.

The first step of each new shape synchronises (warm-up and capture); the others replay. The captured forward is the
eager model's: ``train.compile`` is not applied with graphs on. Each capture has its own
memory pool (replays of different buckets come in any order, so pools are not shared).
"""
from __future__ import annotations

import logging

import torch

from fastdecoder.errors import UserError
from fastdecoder.ops.day_affine import DayGroups

log = logging.getLogger("fastdecoder.train")


def refusal(cfg, device: torch.device, fast: bool, deferred: bool) -> str | None:
    """Why ``train.cuda_graphs`` cannot run with this config and trainer (None: it can)."""
    if device.type != "cuda":
        return f"train.cuda_graphs needs a CUDA device; this run trains on {device} (set train.cuda_graphs: false)"
    if cfg.train.length_bucket <= 0:
        return ("train.cuda_graphs needs length buckets (train.length_bucket > 0, e.g. 32): one capture per padded "
                "length, and without buckets nearly every step has a new length")
    if not fast:
        return "train.cuda_graphs needs the fast path (train.fast: true)"
    if not deferred:
        return ("train.cuda_graphs needs the deferred fast step (fused AdamW, one process, no fp16 GradScaler; "
                "optim.fused true, train.amp bf16 or none, no torchrun): this run's step reads its loss on the host")
    return None


def _dropout_probes(model_cfg) -> list[tuple[str, str]]:
    """(probe name, the key that turns its dropout off) for each kind of dropout the model applies in training."""
    probes = []
    if model_cfg.input_dropout > 0 or (model_cfg.rnn == "ln_gru" and model_cfg.rnn_dropout > 0
                                       and model_cfg.num_layers > 1):
        probes.append(("dropout", "model.input_dropout / model.rnn_dropout"))
    if model_cfg.rnn == "gru" and model_cfg.rnn_dropout > 0 and model_cfg.num_layers > 1:
        probes.append(("cudnn_gru", "model.rnn_dropout (cuDNN's RNN dropout)"))
    return probes


def _probe_module(name: str) -> torch.nn.Module:
    if name == "cudnn_gru":
        class LastOutput(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = torch.nn.GRU(8, 8, 2, batch_first=True, dropout=0.5)

            def forward(self, x):
                return self.rnn(x)[0]
        return LastOutput()
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5))


def masks_vary(capture, name: str, device) -> bool:
    """True if a tiny module with this dropout, captured, gives different outputs on two replays of one input."""
    module = _probe_module(name).to(device).train()
    x = torch.randn(2, 5, 8, device=device, requires_grad=True)
    graphed = capture(module, (x,))
    a = graphed(x).detach().clone()
    b = graphed(x).detach().clone()
    return not torch.equal(a, b)


class _Forward(torch.nn.Module):
    """The captured callable: the model's forward under autocast (cache off) from tensors only, the day groups
    rebuilt from their static part (counts, width, which indices exist)."""

    def __init__(self, model: torch.nn.Module, amp_dtype, device_type: str, groups: DayGroups | None):
        super().__init__()
        self.model = model
        self.amp_dtype = amp_dtype
        self.device_type = device_type
        self.layout = None if groups is None else (groups.counts, groups.width, groups.batch,
                                                   groups.take is not None, groups.put is not None)

    def forward(self, x, day, lens, *group_tensors):
        groups = None
        if self.layout is not None:
            counts, width, batch, has_take, has_put = self.layout
            it = iter(group_tensors)
            pick = next(it)
            take = next(it) if has_take else None
            put = next(it) if has_put else None
            groups = DayGroups(pick=pick, take=take, put=put, counts=counts, width=width, batch=batch)
        with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None,
                            cache_enabled=False):
            return self.model(x, day, lens, groups)


def _group_tensors(groups: DayGroups | None) -> tuple:
    if groups is None:
        return ()
    return tuple(t for t in (groups.pick, groups.take, groups.put) if t is not None)


class StepGraphs:
    """``graphs(x, day, lens, day_groups) -> logits``: the model's forward (and, through autograd, its backward)
    replayed from the capture of this input signature, captured on its first use.

    ``capture(module, sample_args)`` is torch.cuda.make_graphed_callables (a test may pass another);
    ``captures`` counts them, ``shapes`` lists the signatures captured."""

    def __init__(self, model: torch.nn.Module, model_cfg, amp_dtype, device: torch.device, capture=None):
        self.model = model
        self.amp_dtype = amp_dtype
        self.device = torch.device(device)
        self.capture = capture if capture is not None else self._make_graphed
        self.graphed: dict[tuple, object] = {}
        self.captures = 0
        self._probes = _dropout_probes(model_cfg)

    @staticmethod
    def _make_graphed(module, sample_args):
        return torch.cuda.make_graphed_callables(module, sample_args, allow_unused_input=True)

    @property
    def shapes(self) -> list[tuple]:
        return list(self.graphed)

    @staticmethod
    def signature(args: tuple, groups: DayGroups | None) -> tuple:
        layout = None if groups is None else (groups.counts, groups.width, groups.take is not None,
                                              groups.put is not None)
        return tuple((tuple(a.shape), a.dtype) for a in args) + (layout,)

    def check_dropout(self) -> None:
        """The dropout probes (once, before the first capture): UserError where a replay repeats its masks."""
        for name, key in self._probes:
            if not masks_vary(self.capture, name, self.device):
                raise UserError(f"train.cuda_graphs: on this machine a CUDA graph replays the same dropout masks "
                                f"({name} probe), so training would not be the model's: set {key} to 0 or "
                                "train.cuda_graphs: false")
        self._probes = []

    def __call__(self, x: torch.Tensor, day: torch.Tensor, lens: torch.Tensor,
                 day_groups: DayGroups | None) -> torch.Tensor:
        args = (x, day, lens) + _group_tensors(day_groups)
        key = self.signature(args, day_groups)
        fn = self.graphed.get(key)
        if fn is None:
            self.check_dropout()
            module = _Forward(self.model, self.amp_dtype, self.device.type, day_groups)
            static = tuple(a.detach().clone() for a in args)  # the capture's own input buffers
            log.info("CUDA graph capture %d: inputs %s", self.captures + 1, [tuple(a.shape) for a in args])
            fn = self.graphed[key] = self.capture(module, static)
            self.captures += 1
        return fn(*args)
