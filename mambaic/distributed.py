"""Training on several processes with PyTorch's own engine: `torchrun --nproc_per_node=G -m mambaic train`.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; `Ranks.from_environment` joins the process group
(NCCL on GPUs, gloo on CPU) and a single process needs nothing. The model runs under
DistributedDataParallel, told which parameters the forward never uses (MambaIC.unused_parameters)
rather than searching the graph for them every step (find_unused_parameters). The auxiliary
loss's backward comes after DDP's reduction and is not reduced: it depends on the quantiles and
the bottleneck's weights alone, identical on every rank, so its gradients agree already.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @classmethod
    def from_environment(cls, device_type: str) -> "Ranks":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if device_type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise RuntimeError(f"LOCAL_RANK {local_rank}, but this machine has {torch.cuda.device_count()} GPUs; "
                                   "ask torchrun for at most that many processes per node")  # fmt: skip
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(rank, world, local_rank)

    def device(self, device_type: str) -> torch.device:
        return torch.device("cuda", self.local_rank) if device_type == "cuda" else torch.device("cpu")

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` under DistributedDataParallel, or as it is in one process."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, model.unused_parameters())
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on one of them (to skip or stop together)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sums of ``values`` over the ranks."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def check_identical_weights(self, model: torch.nn.Module, device: torch.device) -> str:
        """The weights' digest, after checking that every rank holds the same bytes; raises if not."""
        digest = weights_digest(model)
        if self.distributed:
            mine = torch.tensor([int(digest[:15], 16)], dtype=torch.int64, device=device)
            every = [torch.empty_like(mine) for _ in range(self.world)]
            dist.all_gather(every, mine)
            if len({int(t.item()) for t in every}) != 1:
                raise RuntimeError(f"the {self.world} ranks hold different weights (digests "
                                   f"{[format(int(t.item()), 'x') for t in every]}); the run is not data-parallel any more")  # fmt: skip
        return digest

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, in hex (the codec's fingerprint hash, whole)."""
    from mambaic.codec.fingerprint import full_digest

    return full_digest(model).hex()
