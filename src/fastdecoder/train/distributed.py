"""Multi-process training under ``torchrun``: process group, per-rank devices, small collectives.

``torchrun --nproc_per_node N -m fastdecoder.cli train ...`` (or the ``fastdecoder`` script) sets RANK, WORLD_SIZE and
LOCAL_RANK; the Trainer then joins a process group (NCCL when it trains on CUDA, gloo on the CPU), puts rank r on
``cuda:LOCAL_RANK`` and wraps the model in DistributedDataParallel (gradients averaged over ranks).

Choices (documented in docs/training.md, "Multi-GPU"):

* Data: every rank draws its own batches from the whole training split with its own seed (``rng.rank_seed``: ``seed + 10007 * rank``
  for the sampler, the random cut, the masks and the augmentation noise), so ``train.batch_size`` is per rank and
  an optimizer step sees ``N * batch_size`` trials. The b2t25 sampler draws days and trials with replacement anyway,
  so independent per-rank streams are the same distribution as one larger batch; no rank repeats another's batch.
* Rank 0 alone evaluates, logs, plots and writes files; it broadcasts the validation PER so every rank applies the
  same plateau reductions. The other ranks wait at the next collective meanwhile (process-group timeout 30 min).
* Every rank's sampler and RNG states are gathered into rank 0's checkpoints, so a resumed multi-process run with
  the same number of ranks continues every rank's data stream.
* Non-finite checks and the stop request (SIGTERM/SIGINT) are reduced over ranks each step, so all ranks skip the
  same updates and stop at the same step.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger("fastdecoder.train")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank and world size from torchrun's environment (a single process when WORLD_SIZE is unset or 1)."""
    ws = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if ws <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    return DistInfo(rank=rank, world_size=ws, local_rank=int(os.environ.get("LOCAL_RANK", str(rank))))


def setup(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun; returns (info, this rank's device).

    ``device_name`` is train.device: auto/cuda use ``cuda:LOCAL_RANK`` with NCCL where CUDA is present; cpu (or no
    CUDA) uses gloo on the CPU.
    """
    from fastdecoder.device import resolve_device

    info = env_info()
    requested = resolve_device(device_name)  # checks the name (and CUDA's presence) on every rank
    if not info.enabled:
        return info, requested
    use_cuda = requested.type == "cuda"
    device = torch.device("cuda", info.local_rank) if use_cuda else torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    else:
        backend = dist.get_backend()
    return DistInfo(info.rank, info.world_size, info.local_rank, backend), device


def cleanup(sync: bool = True) -> None:
    """Leave the process group. ``sync``: wait at a barrier first, so that no rank tears its connections down while
    another still runs (rank 0 evaluates and writes the summary after the last step); skipped after an error,
    where the other ranks may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_max_(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_float(x: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's value of ``x`` on every rank."""
    if not info.enabled:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (a picklable object), in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over the names and exact bytes of a module's state dict: equal digests = bitwise equal weights."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rank_digests(module: torch.nn.Module, dist) -> dict:
    """Summary fields at the end of a torchrun run: every rank's weights digest and whether they are identical (a
    collective; logged as an error on the main rank when they differ)."""
    digests = gather_objects(weights_digest(module), dist)
    if len(set(digests)) != 1 and dist.is_main:
        log.error("the ranks' weights differ at the end of training: %s", digests)
    return {"rank_weight_sha256": digests, "ranks_identical": len(set(digests)) == 1}


def own_rank_state(state: dict, d) -> dict | None:
    """This rank's sampler and RNG states in a checkpoint ``state`` (None where the checkpoint has none for it: it
    was written by fewer ranks; a warning says the data streams do not resume exactly when the counts differ)."""
    saved_ws = int(state.get("world_size", 1))
    ranks = state.get("rank_states")
    if saved_ws != d.world_size and d.is_main:
        log.warning("the checkpoint was written by %d process(es), this run has %d: weights, optimizer and "
                    "schedule resume exactly, the per-rank data streams do not", saved_ws, d.world_size)
    if ranks and d.rank < len(ranks):
        return ranks[d.rank]
    if d.rank == 0:
        return {"sampler": state["sampler"], "rng": state["rng"]}
    return None
