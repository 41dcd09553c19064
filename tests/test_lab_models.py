"""lab.models: shapes, the penultimate/classifier contract, and seed-cnn against the seed's layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelsmooth.lab.models import (
    MODELS,
    SEED_CNN_PARAMETERS,
    StackableModel,
    build_model,
    seed_cnn_backward,
    seed_cnn_forward,
)

SHAPES = [(1, 28, 28), (1, 8, 8)]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("in_shape", SHAPES)
def test_contract_shapes_and_penultimate(name, in_shape):
    torch.manual_seed(0)
    model = build_model(name, 7, in_shape)
    x = torch.randn(5, *in_shape)
    logits = model(x)
    features = model.penultimate(x)
    assert logits.shape == (5, 7) and features.dim() == 2 and features.shape[0] == 5
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.weight.shape == (7, features.shape[1])
    torch.testing.assert_close(model.classifier(features), logits, rtol=1e-5, atol=1e-5)
    assert not list(model.buffers())  # the sweep stacks parameters only


def test_seed_cnn_is_the_seeds_network_with_a_k_class_head():
    """The blog experiment's three convs (1->16->16->K, 3x3, stride 2, pad 1), conv3 without ReLU, avg_pool(4)."""
    torch.manual_seed(1)
    model = build_model("seed-cnn", 10, (1, 28, 28))
    conv1, conv2 = nn.Conv2d(1, 16, 3, 2, 1), nn.Conv2d(16, 16, 3, 2, 1)
    conv3 = nn.Conv2d(16, 10, 3, 2, 1)
    with torch.no_grad():
        for ours, theirs in ((model.conv1, conv1), (model.conv2, conv2)):
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
        conv3.weight.copy_(model.classifier.weight.view(10, 16, 3, 3))
        conv3.bias.copy_(model.classifier.bias)
    x = torch.randn(4, 1, 28, 28)
    reference = F.avg_pool2d(conv3(F.relu(conv2(F.relu(conv1(x))))), 4).flatten(1)
    torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-5)


def test_seed_cnn_initialisation_matches_a_conv_head():
    """The Linear head draws from the same range as the seed's Conv2d(16, K, 3) (fan_in 144)."""
    torch.manual_seed(0)
    head = build_model("seed-cnn", 10, (1, 28, 28)).classifier
    bound = 1 / 144 ** 0.5
    assert head.weight.abs().max() <= bound and head.bias.abs().max() <= bound
    assert head.weight.abs().max() > 0.9 * bound


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stacked_forward_equals_each_cell_alone(name):
    """C = 4 cells reading S = 2 input batches (3 cells, then 1) at once == each cell's own forward."""
    torch.manual_seed(0)
    models = [build_model(name, 5, (1, 8, 8)) for _ in range(4)]
    params = {n: torch.stack([dict(m.named_parameters())[n] for m in models])
              for n, _ in models[0].named_parameters()}
    x = torch.randn(2, 6, 1, 8, 8)
    logits = models[0].stacked_forward(params, x, (3, 1))
    features = models[0].stacked_features(params, x, (3, 1))
    for c, model in enumerate(models):
        batch = x[0 if c < 3 else 1]
        torch.testing.assert_close(logits[c], model(batch), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(features[c], model.penultimate(batch), rtol=1e-5, atol=1e-5)


def test_options_and_errors():
    assert build_model("mlp", 3, (1, 8, 8), widths=[10, 20]).classifier.in_features == 20
    assert build_model("resnet", 3, (1, 8, 8), width=8).classifier.in_features == 32
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("vgg", 10, (1, 28, 28))
    with pytest.raises(ValueError, match="num_classes must be an int >= 2"):
        build_model("mlp", 1, (4,))
    with pytest.raises(ValueError, match="widths must be a non-empty list"):
        build_model("mlp", 3, (4,), widths=[])
    with pytest.raises(ValueError, match=r"in_shape must be \(channels, height, width\)"):
        build_model("seed-cnn", 3, (64,))


def seed_network_reference(params: dict, x: torch.Tensor, cell: int) -> torch.Tensor:
    """One cell of the seed's network from torch's own layers: conv, conv, K-channel conv, mean."""
    p = {name: value[cell] for name, value in params.items()}
    h = F.relu(F.conv2d(x, p["conv1.weight"], p["conv1.bias"], 2, 1))
    h = F.relu(F.conv2d(h, p["conv2.weight"], p["conv2.bias"], 2, 1))
    k = p["classifier.weight"].shape[0]
    head = p["classifier.weight"].view(k, h.shape[1], 3, 3)
    return F.conv2d(h, head, p["classifier.bias"], 2, 1).mean((2, 3))


@pytest.mark.parametrize("in_shape", [(1, 28, 28), (2, 9, 7), (3, 8, 8)])
def test_seed_cnn_hand_written_backward_equals_autograd_through_torch_layers(in_shape):
    """seed_cnn_forward / seed_cnn_backward == autograd through F.conv2d, in float64.

    Four cells reading two input batches (3 cells, then 1); odd and even image sizes (the
    padding below the image differs); several input channels; the gradient for x as well.
    """
    torch.manual_seed(3)
    models = [build_model("seed-cnn", 5, in_shape, channels=4).double() for _ in range(4)]
    params = {n: torch.stack([dict(m.named_parameters())[n] for m in models]).detach().requires_grad_()
              for n in SEED_CNN_PARAMETERS}
    x = torch.randn(2, 6, *in_shape, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(4, 6, 5, dtype=torch.float64)  # dL/dlogits: every logit weighed differently
    logits, saved = seed_cnn_forward(x.detach(), *(p.detach() for p in params.values()), (3, 1))
    got = seed_cnn_backward(saved, upstream, [True] * 7)
    reference = torch.stack([seed_network_reference(params, x[0 if c < 3 else 1], c) for c in range(4)])
    want = torch.autograd.grad(reference, [x, *params.values()], upstream)
    torch.testing.assert_close(logits, reference, rtol=1e-12, atol=1e-12)
    for name, g, w in zip(["x", *SEED_CNN_PARAMETERS], got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_stacked_vjp_equals_autograd_of_stacked_forward(name):
    """The training step's interface, for every model: logits and parameter gradients as autograd's
    through the features and the classifier (for seed-cnn: F.unfold and F.conv2d, not the
    hand-written path); a frozen parameter gets None."""
    torch.manual_seed(5)
    models = [build_model(name, 4, (1, 8, 8)).double() for _ in range(3)]
    params = {n: torch.stack([dict(m.named_parameters())[n] for m in models]).detach().requires_grad_()
              for n, _ in models[0].named_parameters()}
    frozen = next(iter(params))
    params[frozen].requires_grad_(False)
    x = torch.randn(2, 5, 1, 8, 8, dtype=torch.float64)
    upstream = torch.randn(3, 5, 4, dtype=torch.float64)
    logits, vjp = models[0].stacked_vjp(params, x, (2, 1))
    grads = vjp(upstream)
    reference = StackableModel.stacked_forward(models[0], params, x, (2, 1))
    trained = [n for n, p in params.items() if p.requires_grad]
    want = dict(zip(trained, torch.autograd.grad(reference, [params[n] for n in trained], upstream)))
    assert not logits.requires_grad and grads[frozen] is None
    torch.testing.assert_close(logits, reference.detach(), rtol=1e-12, atol=1e-12)
    for n in trained:
        torch.testing.assert_close(grads[n], want[n], rtol=1e-10, atol=1e-12, msg=n)
