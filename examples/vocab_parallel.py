"""A tensor-parallel LM head with the vocab-parallel label-smoothed loss, checked against one process.

    torchrun --nproc-per-node 2 examples/vocab_parallel.py      (CPU, gloo; any number of ranks)

Every rank builds the same seeded model and batch. The LM head is column-parallel (as Megatron's
``ColumnParallelLinear(..., gather_output=False)``): rank r keeps rows ``[offset_r, offset_r + K_r)``
of the (V, H) weight, so its output is its slice of the vocabulary; V = 1001 does not divide
evenly, so the slices differ in size. ``vocab_parallel_cross_entropy`` turns the slices into the
loss of the whole vocabulary. Each rank then compares its loss, its weight slice's gradient and
the hidden states' gradient with ``labelsmooth.cross_entropy`` on the full logits in one process.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

import labelsmooth
from labelsmooth.distributed import vocab_parallel_cross_entropy

VOCAB, HIDDEN, BATCH, SEQUENCE = 1001, 32, 4, 6
LABEL_SMOOTHING, PAD = 0.1, 0


class CopyToTensorParallel(torch.autograd.Function):
    """Identity forward; backward sums the input gradient over the tensor-parallel ranks.

    This is what a column-parallel layer does with its (replicated) input: each rank's slice of
    the head contributes part of d loss / d hidden.
    """

    @staticmethod
    def forward(ctx, hidden, group):
        ctx.group = group
        return hidden

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def main() -> int:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    group = dist.group.WORLD  # in a real model: the tensor-parallel group

    generator = torch.Generator().manual_seed(0)
    head = torch.randn(VOCAB, HIDDEN, generator=generator, dtype=torch.float64) / HIDDEN ** 0.5
    hidden = torch.randn(BATCH, SEQUENCE, HIDDEN, generator=generator, dtype=torch.float64)
    target = torch.randint(VOCAB, (BATCH, SEQUENCE), generator=generator)
    target[:, -2:] = PAD  # padding positions, ignored

    rows = torch.tensor_split(torch.arange(VOCAB), world_size)[rank]
    local_head = head[rows].clone().requires_grad_()
    local_hidden = hidden.clone().requires_grad_()
    local_logits = CopyToTensorParallel.apply(local_hidden, group) @ local_head.T  # (B, S, K_r)
    loss = vocab_parallel_cross_entropy(local_logits.flatten(0, 1), target.flatten(), LABEL_SMOOTHING,
                                        group=group, ignore_index=PAD)
    loss.backward()

    full_head = head.clone().requires_grad_()
    full_hidden = hidden.clone().requires_grad_()
    reference = labelsmooth.cross_entropy((full_hidden @ full_head.T).flatten(0, 1), target.flatten(),
                                          ignore_index=PAD, label_smoothing=LABEL_SMOOTHING)
    reference.backward()

    errors = {
        "loss": (loss - reference).abs().item(),
        "head grad": (local_head.grad - full_head.grad[rows]).abs().max().item(),
        "hidden grad": (local_hidden.grad - full_hidden.grad).abs().max().item(),
    }
    print(f"rank {rank}/{world_size}: classes {rows[0].item()}..{rows[-1].item()}, "
          f"loss {loss.item():.12f}, single process {reference.item():.12f}, "
          + ", ".join(f"max |diff| {name} {value:.1e}" for name, value in errors.items()), flush=True)
    dist.destroy_process_group()
    return 0 if max(errors.values()) < 1e-10 else 1


if __name__ == "__main__":
    sys.exit(main())
