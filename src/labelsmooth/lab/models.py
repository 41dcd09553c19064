"""The lab's models, by name: ``seed-cnn``, ``mlp`` and ``resnet`` (registry :data:`MODELS`).

Every model splits into ``penultimate(x) -> (N, D)`` features and a linear ``classifier``
(an ``nn.Linear`` with weight (K, D)) so that ``model(x) == model.classifier(model.penultimate(x))``
(up to float rounding); the analysis of penultimate-layer clusters (Müller et al. 2019) reads both.

Every model is written once, for C stacked copies ("cells") at a time:
``stacked_forward(params, x, counts) -> (C, N, K)`` where ``params`` maps each parameter name to a
tensor with a leading cell axis (C, *shape), and ``x`` (S, N, *in_shape) holds S input batches read
by ``counts[s]`` consecutive cells each (``sum(counts) == C``). Convolutions of the C cells run as
one grouped convolution and linear layers as one batched matmul; the first layer computes one
convolution (or matmul) per input batch with the weights of the cells that read it. The ordinary
``forward`` is the case C = S = 1. Models hold no buffers and no randomness in ``forward``
(GroupNorm rather than BatchNorm, no dropout).

Training goes through ``stacked_vjp(params, x, counts) -> (logits, vjp)``: the logits and a
function from dL/dlogits to every parameter's gradient (autograd by default). ``seed-cnn``, the
lab's main model, overrides it with a hand-written backward (:func:`seed_cnn_backward`), and its
forward runs channels-last with conv1 as a gather and a matmul: about half the operations per
32-image step, which is what such a step costs on a CPU.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MODELS", "MLP", "ResNet", "SeedCNN", "StackableModel", "build_model", "patch_rows", "seed_cnn_backward",
           "seed_cnn_forward"]

Params = dict[str, Tensor]


# 1. Layers of C cells at once --------------------------------------------------------------------------


def input_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, counts: Sequence[int], *,
                 stride: int = 1, padding: int = 0) -> Tensor:
    """First layer: x (S, N, cin, H, W), weight (C, cout, cin, k, k) -> (N, C * cout, Ho, Wo).

    Input batch s goes through the filters of its ``counts[s]`` cells in one convolution.
    """
    outputs, start = [], 0
    for batch, count in zip(x, counts):
        end = start + count
        outputs.append(F.conv2d(batch, weight[start:end].flatten(0, 1),
                                None if bias is None else bias[start:end].flatten(), stride, padding))
        start = end
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, 1)


def grouped_conv2d(h: Tensor, weight: Tensor, bias: Tensor | None, *, stride: int = 1,
                   padding: int = 0) -> Tensor:
    """h (N, C * cin, H, W) with cell c's channels in block c, weight (C, cout, cin, k, k)."""
    return F.conv2d(h, weight.flatten(0, 1), None if bias is None else bias.flatten(), stride, padding,
                    groups=weight.shape[0])


def grouped_group_norm(h: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float) -> Tensor:
    """GroupNorm of each cell's channel block: ``groups`` groups per cell, weight/bias (C, channels)."""
    return F.group_norm(h, groups * weight.shape[0], weight.flatten(), bias.flatten(), eps)


def input_linear(x: Tensor, weight: Tensor, bias: Tensor, counts: Sequence[int]) -> Tensor:
    """First layer: x (S, N, D), weight (C, out, D) -> (C, N, out).

    One batched matmul of every cell with its input batch (repeated for its cells): slicing the
    weights per input batch instead would make autograd add a zero-filled gradient of all C
    cells' weights per slice (4x slower at 12 cells of 4 seeds).
    """
    if len(counts) == 1:
        x = x.expand(counts[0], -1, -1)
    else:
        x = x.repeat_interleave(torch.tensor(counts, device=x.device), 0, output_size=sum(counts))
    return grouped_linear(x, weight, bias)


def grouped_linear(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """h (C, N, D), weight (C, out, D), bias (C, out) -> (C, N, out).

    Computed transposed, (W h^T + b)^T, so that autograd's weight gradient G^T h comes out
    contiguous like the weight, which the optimizer's elementwise step reads faster.
    """
    return torch.baddbmm(bias[:, :, None], weight, h.transpose(1, 2)).transpose(1, 2)


def cells_last(h: Tensor, cells: int) -> Tensor:
    """(N, C * D, ...) with cell blocks of channels -> (C, N, D * ...)."""
    return h.reshape(h.shape[0], cells, -1).transpose(0, 1)


class StackableModel(nn.Module):
    """A model written for C stacked copies; ``forward`` and ``penultimate`` are the case C = 1.

    Subclasses define ``stacked_features(params, x, counts) -> (C, N, D)`` (the penultimate
    features) and may override ``stacked_forward`` when the logits have a faster exact form.
    """

    classifier: nn.Linear
    # Whether evaluating all cells per chunk of images beats one cell at a time on the CPU
    # (measured per model: seed-cnn 1.3x faster together, mlp 1.3x and resnet 2.7x slower).
    evaluates_cells_together: bool = False
    # On the CPU, evaluating all cells together, at most about this many (image, cell) pairs per
    # chunk (None: no limit), so that the chunk's activations stay in the caches.
    cpu_evaluation_rows: int | None = None

    def stacked_features(self, params: Params, x: Tensor, counts: Sequence[int]) -> Tensor:
        raise NotImplementedError

    def stacked_forward(self, params: Params, x: Tensor, counts: Sequence[int]) -> Tensor:
        return grouped_linear(self.stacked_features(params, x, counts), params["classifier.weight"],
                              params["classifier.bias"])

    def stacked_vjp(self, params: Params, x: Tensor, counts: Sequence[int]) -> tuple[Tensor, Callable]:
        """Logits (C, N, K), detached, and ``vjp(G) -> {name: dL/dparam}`` for G = dL/dlogits.

        The training step's interface: the loss's gradient with respect to the logits goes in,
        the parameters' gradients come out (None for a parameter that does not require one).
        By autograd here; a model with a hand-written backward overrides it and trains without
        building a graph.
        """
        with torch.enable_grad():
            logits = self.stacked_forward(params, x, counts)
        names = [name for name, p in params.items() if p.requires_grad]

        def vjp(grad: Tensor) -> Params:
            grads = torch.autograd.grad(logits, [params[name] for name in names], grad, allow_unused=True)
            return {name: dict(zip(names, grads)).get(name) for name in params}

        return logits.detach(), vjp

    def _one_cell(self) -> Params:
        return {name: p.unsqueeze(0) for name, p in self.named_parameters()}

    def penultimate(self, x: Tensor) -> Tensor:
        return self.stacked_features(self._one_cell(), x.unsqueeze(0), (1,))[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.stacked_forward(self._one_cell(), x.unsqueeze(0), (1,))[0]


# 2. The models ----------------------------------------------------------------------------------------------


class SeedCNN(StackableModel):
    """The blog experiment's small CNN with a K-class head: three 3x3 stride-2 convolutions
    (16, 16, K channels).

    The original ends in ``relu(conv3(h)) -> avg_pool2d(4)`` with 32 channels for 10 classes. Here
    conv3 has K output channels and no ReLU (a logit must be able to go negative), and the pooling
    is the global mean (on 28x28 inputs conv3's map is 4x4, where ``avg_pool2d(4)`` *is* the
    global mean; the global mean also works on 8x8 digits). Conv3 and the pooling together are
    one linear map of conv2's output ``h`` (c channels, H x W), written two exact ways:

    - ``classifier(penultimate(x))``: with ``P_p`` the zero-padded 3x3 patch of ``h`` under
      output position p of L, ``mean_p (W * P_p + b) = W * (mean_p P_p) + b``; so the penultimate
      features are the patches averaged over positions (D = 16 * 9 = 144) and ``classifier`` is
      a Linear whose weight is conv3's kernel, flattened. Its default initialisation is the
      original conv3's too (both draw from fan_in = 144).
    - ``forward``: ``logits_k = b_k + sum_{c,y,x} h[c, y, x] M[k, c, y, x]`` where M[k, c] adds up,
      over the L positions, conv3's kernel placed where it reads ``h``, divided by L: M is the
      transposed convolution of a constant 1/L map with that kernel, ``W[k, c] @ tap_map``.
      One (c H W) x K matmul per image instead of a K-channel convolution, and cheaper.

    ``stacked_forward`` and ``stacked_vjp`` run :func:`seed_cnn_forward` (the second form, with
    activations channels-last) and its hand-written backward :func:`seed_cnn_backward`;
    ``stacked_features`` runs torch's own layers, so the tests compare the two.

    >>> import torch
    >>> model = SeedCNN(10, (1, 28, 28))
    >>> x = torch.randn(2, 1, 28, 28)
    >>> torch.allclose(model(x), model.classifier(model.penultimate(x)), atol=1e-5)
    True
    """

    evaluates_cells_together = True
    # measured on 6,000 28x28 images (quiet 2-core Xeon, one and two threads): 1,536 pairs per chunk
    # (500 images of 3 cells, 128 of 12) is 1.1-1.4x faster than 384 (each forward call has a fixed
    # cost of about 0.2 ms), while 3,072 pairs are 2.5x slower at 12 cells (conv1's output, 19 MB
    # per chunk at 1,536 pairs, then leaves the caches)
    cpu_evaluation_rows = 1536

    def __init__(self, num_classes: int, in_shape: Sequence[int], channels: int = 16) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"in_shape must be (channels, height, width) for seed-cnn, "
                             f"got {tuple(in_shape)}")
        self.conv1 = nn.Conv2d(in_shape[0], channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.classifier = nn.Linear(channels * 9, num_classes)

    def stacked_conv_features(self, params: Params, x: Tensor, counts: Sequence[int]) -> Tensor:
        """conv2's output, the input of the original conv3: (N, C * channels, H/4, W/4)."""
        h = F.relu(input_conv2d(x, params["conv1.weight"], params["conv1.bias"], counts, stride=2, padding=1))
        return F.relu(grouped_conv2d(h, params["conv2.weight"], params["conv2.bias"], stride=2, padding=1))

    def stacked_features(self, params: Params, x: Tensor, counts: Sequence[int]) -> Tensor:
        h = self.stacked_conv_features(params, x, counts)
        patches = F.unfold(h, 3, padding=1, stride=2).mean(2)  # (N, C * channels * 9)
        return cells_last(patches, params["conv1.weight"].shape[0])

    def stacked_forward(self, params: Params, x: Tensor, counts: Sequence[int]) -> Tensor:
        weights = [params[name] for name in SEED_CNN_PARAMETERS]
        if not torch.is_grad_enabled():  # evaluation: no autograd node to build
            return seed_cnn_forward(x, *weights, counts)[0]
        return StackedSeedCNN.apply(x, *weights, tuple(counts))

    def stacked_vjp(self, params: Params, x: Tensor, counts: Sequence[int]) -> tuple[Tensor, Callable]:
        with torch.no_grad():
            logits, saved = seed_cnn_forward(x, *(params[name] for name in SEED_CNN_PARAMETERS), counts)
        needs = [False] + [params[name].requires_grad for name in SEED_CNN_PARAMETERS]

        def vjp(grad: Tensor) -> Params:
            with torch.no_grad():
                grads = seed_cnn_backward(saved, grad, needs)[1:]
            return dict(zip(SEED_CNN_PARAMETERS, grads))

        return logits, vjp


@functools.lru_cache(maxsize=None)
def tap_map(height: int, width: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(9, height * width): row t is where tap t = (i, j) of a 3x3, stride-2, padding-1 kernel
    reads an H x W map, summed over the output positions and divided by their number L.

    So for a kernel w (9,), ``w @ tap_map`` is the map M of :class:`SeedCNN`: the transposed
    convolution of a constant 1/L map with w.

    >>> tap_map(3, 3, device=torch.device("cpu"), dtype=torch.float32)[4].view(3, 3)  # the centre tap
    tensor([[0.2500, 0.0000, 0.2500],
            [0.0000, 0.0000, 0.0000],
            [0.2500, 0.0000, 0.2500]])
    """
    rows, cols = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    with torch.inference_mode(False), torch.no_grad():  # a constant usable by autograd, wherever made
        one_hot = torch.eye(9, dtype=dtype, device=device).view(9, 1, 3, 3)
        mean_map = torch.full((1, 9, rows, cols), 1.0 / (rows * cols), dtype=dtype, device=device)
        taps = F.conv_transpose2d(mean_map, one_hot, None, 2, 1,
                                  (height - 2 * rows + 1, width - 2 * cols + 1), 9)
    return taps.view(9, height * width)


@functools.lru_cache(maxsize=None)
def patch_columns(channels: int, height: int, width: int, device: torch.device) -> Tensor:
    """Where :func:`patch_rows` reads each entry: indices into an image flattened to
    ``channels * height * width`` values followed by a 0 (read by taps in the padding) and a 1."""
    rows, cols = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    size = channels * height * width
    y = 2 * torch.arange(rows).view(rows, 1, 1, 1, 1) - 1 + torch.arange(3).view(1, 1, 1, 3, 1)
    x = 2 * torch.arange(cols).view(1, cols, 1, 1, 1) - 1 + torch.arange(3).view(1, 1, 1, 1, 3)
    c = torch.arange(channels).view(1, 1, channels, 1, 1)
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    taps = torch.where(inside, (c * height + y) * width + x, size)  # (rows, cols, channels, 3, 3)
    ones = torch.full((rows, cols, 1), size + 1)
    return torch.cat([taps.reshape(rows, cols, -1), ones], 2).reshape(-1).to(device)


def patch_rows(x: Tensor) -> Tensor:
    """The 3x3, stride-2, padding-1 patches of x (B, cin, H, W), one row per output position,
    with a trailing 1 (for the bias): (B * Ho * Wo, cin * 9 + 1), columns ordered (channel, tap
    row, tap column) like a flattened kernel.

    One gather of precomputed indices (a third of F.unfold's time on 32 small images on the CPU).

    >>> x = torch.arange(16.0).view(1, 1, 4, 4)
    >>> patch_rows(x)[0]  # output position (0, 0): taps above and left of the image read 0
    tensor([0., 0., 0., 0., 0., 1., 0., 4., 5., 1.])
    """
    b, cin, height, width = x.shape
    values = torch.cat([x.reshape(b, -1), _zero_one(x.dtype, x.device).expand(b, 2)], 1)
    index = patch_columns(cin, height, width, x.device)
    return values.index_select(1, index).view(-1, cin * 9 + 1)


@functools.lru_cache(maxsize=None)
def _zero_one(dtype: torch.dtype, device: torch.device) -> Tensor:
    """The values read by :func:`patch_rows`' padding taps and bias column, made once."""
    with torch.inference_mode(False):
        return torch.tensor([0.0, 1.0], dtype=dtype, device=device)


SEED_CNN_PARAMETERS = ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "classifier.weight",
                       "classifier.bias")


class SeedCNNSaved(NamedTuple):
    """What :func:`seed_cnn_backward` reads of a forward pass (activations channels-last)."""

    patches: Tensor              # (S, N * L1, cin * 9 + 1): each input batch's patch_rows
    w1: Tensor                   # (C, c1, cin, 3, 3)
    h1: Tensor                   # (N, C * c1, H1, W1) after the ReLU, channels-last
    kernels2: Tensor             # (C * c2, c1, 3, 3), conv2's kernels as convolved, channels-last
    h2: Tensor                   # (N, C * c2, H2, W2) after the ReLU, channels-last
    features: Tensor             # (C, N, L2 * c2): h2 per cell, (position, channel) order
    head: Tensor                 # (C, K, L2 * c2), the head's map M in the same order
    taps: Tensor                 # (9, L2), tap_map
    counts: tuple[int, ...]
    input_shape: tuple[int, int]


def cell_blocks(counts: Sequence[int], width: int) -> list[slice]:
    """Per input batch, the slice of its cells' columns when each cell owns ``width`` consecutive ones.

    >>> cell_blocks((3, 1), 16)
    [slice(0, 48, None), slice(48, 64, None)]
    """
    ends = itertools.accumulate(counts)
    return [slice((end - count) * width, end * width) for count, end in zip(counts, ends)]


def seed_cnn_forward(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, w3: Tensor, b3: Tensor,
                     counts: Sequence[int]) -> tuple[Tensor, SeedCNNSaved]:
    """:class:`SeedCNN`'s logits (C, N, K) for C stacked cells, and what the backward needs.

    Inputs as in ``stacked_forward``: x (S, N, cin, H, W) read by ``counts[s]`` cells each;
    weights with a leading cell axis, conv1 (C, c1, cin, 3, 3), conv2 (C, c2, c1, 3, 3),
    classifier (C, K, c2 * 9). Activations are channels-last, where oneDNN's grouped
    convolution of 16-channel maps runs about 1.5x faster than in NCHW (3x for its backward).

    1. conv1 as one matmul per input batch: its patch rows P (N L1, cin 9 + 1), ending in a 1,
       times its cells' kernels and biases, written straight into that batch's columns of
       h1 = relu(P [W1 | b1]^T), (N L1, C c1).
    2. conv2 as one grouped convolution (group c = cell c): h2 = relu(conv2(h1)).
    3. The head as the linear map of :class:`SeedCNN`: logits_c = h2_c M_c^T + b3_c, with
       M_c = W3_c (K c2, 9) @ tap_map (9, L2) laid out (K, L2 c2) like h2_c's rows.
    """
    batches, n, cin, height, width = x.shape
    cells, c1 = w1.shape[:2]
    c2, k = w2.shape[1], w3.shape[1]
    rows1, cols1 = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    patches = patch_rows(x.flatten(0, 1)).view(batches, n * rows1 * cols1, cin * 9 + 1)
    kernels1 = torch.cat([w1.reshape(cells * c1, cin * 9), b1.reshape(cells * c1, 1)], 1)
    h1 = x.new_empty(n * rows1 * cols1, cells * c1)
    for batch_patches, block in zip(patches, cell_blocks(counts, c1)):
        torch.mm(batch_patches, kernels1[block].t(), out=h1[:, block])
    h1 = h1.relu_().view(n, rows1, cols1, cells * c1).permute(0, 3, 1, 2)
    kernels2 = w2.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    h2 = F.conv2d(h1, kernels2, b2.flatten(), 2, 1, groups=cells).relu_()
    positions = h2.shape[2] * h2.shape[3]
    features = h2.permute(0, 2, 3, 1).reshape(n, positions, cells, c2).permute(2, 0, 1, 3).reshape(cells, n, -1)
    taps = tap_map(*h2.shape[2:], device=h2.device, dtype=h2.dtype)
    head = torch.mm(w3.reshape(cells * k * c2, 9), taps).view(cells, k, c2, -1).transpose(2, 3).reshape(cells, k, -1)
    logits = torch.baddbmm(b3.unsqueeze(1), features, head.transpose(1, 2))
    return logits, SeedCNNSaved(patches, w1, h1, kernels2, h2, features, head, taps, tuple(counts),
                                (height, width))


def seed_cnn_backward(saved: SeedCNNSaved, grad: Tensor, needs: Sequence[bool]) -> list[Tensor | None]:
    """Gradients [dx, dW1, db1, dW2, db2, dW3, db3] of :func:`seed_cnn_forward` for G = dL/dlogits.

    ``needs`` says which of the seven are wanted (None for the others). In reverse:

    3. db3 = sum_n G; dM_c = G_c^T h2_c and dW3 = dM tap_map^T (M is linear in W3);
       dh2_c = G_c M_c.
    2. Through the ReLU, dh2 *= [h2 > 0] (h2 is the ReLU's output: positive exactly where its
       input is), then channels-last; torch's convolution backward gives dh1, dW2, db2.
    1. Through the ReLU again, dh1 *= [h1 > 0] in place; per input batch [dW1 | db1] = dh1^T P
       (the trailing 1 of P sums dh1 over rows for the bias), and dx folds dh1 W1 back onto the
       image (the transpose of the patch rows).
    """
    patches, w1, h1, kernels2, h2, features, head, taps, counts, input_shape = saved
    cells, n, k = grad.shape
    c1, cin, c2 = w1.shape[1], w1.shape[2], kernels2.shape[0] // cells
    positions = taps.shape[1]
    grads: list[Tensor | None] = [None] * 7
    # 3. the head
    if needs[6]:
        grads[6] = grad.sum(1)
    if needs[5]:
        dm = torch.bmm(grad.transpose(1, 2), features).view(cells * k, positions, c2)
        grads[5] = torch.mm(dm.transpose(1, 2).reshape(-1, positions), taps.t()).view(cells, k, c2 * 9)
    if not any(needs[:5]):
        return grads
    # dh2 (C, N, positions c2), times the ReLU's mask (features holds h2 in this order), then
    # channels-last (N, C c2, H2, W2) like h2
    by_cell = torch.bmm(grad, head)
    by_cell = torch.ops.aten.threshold_backward.grad_input(by_cell, features, 0, grad_input=by_cell)
    dh2 = torch.empty_like(h2)
    dh2.permute(0, 2, 3, 1).view(n, positions, cells, c2).copy_(
        by_cell.view(cells, n, positions, c2).permute(1, 2, 0, 3))
    # 2. conv2
    dh1, dw2, db2 = torch.ops.aten.convolution_backward(
        dh2, h1, kernels2, [cells * c2], [2, 2], [1, 1], [1, 1], False, [0, 0], cells,
        [any(needs[:3]), needs[3], needs[4]])
    grads[3] = None if dw2 is None else dw2.reshape(cells, c2, *kernels2.shape[1:])
    grads[4] = None if db2 is None else db2.view(cells, c2)
    if not any(needs[:3]):
        return grads
    # 1. conv1, per input batch; dh1 rows are (image, position), columns (cell, channel)
    dh1 = torch.ops.aten.threshold_backward.grad_input(dh1, h1, 0, grad_input=dh1)
    dh1 = dh1.permute(0, 2, 3, 1).reshape(-1, cells * c1)
    blocks = cell_blocks(counts, c1)
    if needs[1] or needs[2]:
        kernel_grads = dh1.new_empty(cin * 9 + 1, cells * c1)  # [dW1 | db1]^T
        for batch_patches, block in zip(patches, blocks):
            torch.mm(batch_patches.t(), dh1[:, block], out=kernel_grads[:, block])
        if needs[1]:
            grads[1] = kernel_grads[:-1].t().reshape(cells, c1, cin, 3, 3)
        if needs[2]:
            grads[2] = kernel_grads[-1].view(cells, c1)
    if needs[0]:
        dx = []
        for block in blocks:
            count = (block.stop - block.start) // c1
            dpatches = (dh1[:, block] @ w1[block.start // c1:block.stop // c1].reshape(count * c1, cin * 9))
            dx.append(F.fold(dpatches.view(n, -1, cin * 9).transpose(1, 2), input_shape, 3, padding=1, stride=2))
        grads[0] = torch.stack(dx)
    return grads


class StackedSeedCNN(torch.autograd.Function):
    """:func:`seed_cnn_forward` as one autograd node whose backward is :func:`seed_cnn_backward`."""

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, w3: Tensor, b3: Tensor,
                counts: tuple[int, ...]) -> Tensor:
        logits, saved = seed_cnn_forward(x, w1, b1, w2, b2, w3, b3, counts)
        if any(ctx.needs_input_grad):
            ctx.saved = saved
        return logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        return (*seed_cnn_backward(ctx.saved, grad, ctx.needs_input_grad[:7]), None)


class MLP(StackableModel):
    """Fully connected: flatten, then ``Linear -> ReLU`` for each width, then the classifier.

    >>> import torch
    >>> MLP(3, (1, 8, 8), widths=(32, 16))(torch.randn(5, 1, 8, 8)).shape
    torch.Size([5, 3])
    """

    def __init__(self, num_classes: int, in_shape: Sequence[int], widths: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths!r}")
        sizes = [math.prod(in_shape), *widths]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.classifier = nn.Linear(sizes[-1], num_classes)

    def stacked_features(self, params: Params, x: Tensor, counts: Sequence[int]) -> Tensor:
        h = F.relu(input_linear(x.flatten(2), params["layers.0.weight"], params["layers.0.bias"], counts))
        for i in range(1, len(self.layers)):
            h = F.relu(grouped_linear(h, params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]))
        return h


class BasicBlock(nn.Module):
    """``relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))`` with GroupNorm."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride, self.groups = stride, groups
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
            self.shortcut_norm = nn.GroupNorm(groups, cout)

    def stacked(self, params: Params, prefix: str, h: Tensor) -> Tensor:
        def norm(name: str, t: Tensor) -> Tensor:
            return grouped_group_norm(t, params[f"{prefix}{name}.weight"], params[f"{prefix}{name}.bias"],
                                      self.groups, self.norm1.eps)

        out = F.relu(norm("norm1", grouped_conv2d(h, params[f"{prefix}conv1.weight"], None,
                                                  stride=self.stride, padding=1)))
        out = norm("norm2", grouped_conv2d(out, params[f"{prefix}conv2.weight"], None, padding=1))
        if hasattr(self, "shortcut"):
            h = norm("shortcut_norm", grouped_conv2d(h, params[f"{prefix}shortcut.weight"], None,
                                                     stride=self.stride))
        return F.relu(out + h)


class ResNet(StackableModel):
    """A small ResNet for 28x28 (or 8x8) images: a 3x3 stem, three stages of ``blocks`` basic
    blocks with widths (w, 2w, 4w) and strides (1, 2, 2), GroupNorm, global average pooling.

    >>> import torch
    >>> ResNet(10, (1, 8, 8), width=8)(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(self, num_classes: int, in_shape: Sequence[int], width: int = 16, blocks: int = 1,
                 groups: int = 4) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"in_shape must be (channels, height, width) for resnet, got {tuple(in_shape)}")
        if width % groups:
            raise ValueError(f"width must be a multiple of groups={groups}, got {width}")
        self.groups = groups
        self.stem = nn.Conv2d(in_shape[0], width, 3, padding=1, bias=False)
        self.stem_norm = nn.GroupNorm(groups, width)
        layers, cin = [], width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(blocks):
                layers.append(BasicBlock(cin, cout, 2 if stage and b == 0 else 1, groups))
                cin = cout
        self.blocks = nn.ModuleList(layers)
        self.classifier = nn.Linear(cin, num_classes)

    def stacked_features(self, params: Params, x: Tensor, counts: Sequence[int]) -> Tensor:
        h = input_conv2d(x, params["stem.weight"], None, counts, padding=1)
        h = F.relu(grouped_group_norm(h, params["stem_norm.weight"], params["stem_norm.bias"], self.groups,
                                      self.stem_norm.eps))
        for i, block in enumerate(self.blocks):
            h = block.stacked(params, f"blocks.{i}.", h)
        return cells_last(h.mean((2, 3)), params["stem.weight"].shape[0])


# name -> constructor(num_classes, in_shape, **options)
MODELS: dict[str, Callable[..., StackableModel]] = {
    "seed-cnn": SeedCNN,
    "mlp": MLP,
    "resnet": ResNet,
}


def build_model(name: str, num_classes: int, in_shape: Sequence[int], **options) -> StackableModel:
    """A fresh model from the registry, initialised from torch's global RNG.

    >>> build_model("seed-cnn", 10, (1, 28, 28)).classifier
    Linear(in_features=144, out_features=10, bias=True)
    """
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    if not (isinstance(num_classes, int) and num_classes >= 2):
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    return MODELS[name](num_classes, tuple(in_shape), **options)
