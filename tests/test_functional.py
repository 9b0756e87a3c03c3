"""fewmed.nn's fast BatchNorm double backward and gather max-pooling equal torch's."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from fewmed.nn import Conv4, IndexMaxPool2d, batch_norm_train, max_pool2d_gather


def _torch_bn(x, w, b):
    return F.batch_norm(x, None, None, w, b, True, 0.0, 1e-5)


def _fast_bn(x, w, b):
    return batch_norm_train(x, w, b, 1e-5)


def _second_derivatives(fn, inputs, use):
    """Gradients of a scalar built from the first derivatives that ``use`` selects."""
    out = fn(*inputs)
    first = torch.autograd.grad((out * torch.cos(out)).sum(), inputs, create_graph=True)
    total = sum((g * g.sin()).sum() for g, u in zip(first, use) if u)
    return first, torch.autograd.grad(total, inputs, allow_unused=True)


@pytest.mark.parametrize("shape", [(6, 3, 5, 5), (4, 2, 3, 3), (10, 4, 1, 1)])
@pytest.mark.parametrize("use", [(1, 1, 1), (1, 0, 0), (0, 1, 0), (0, 1, 1)])
def test_batch_norm_train_matches_torch_to_second_order(shape, use):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape[1], generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(shape[1], generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.equal(_fast_bn(x, w, b), _torch_bn(x, w, b))
    first_ref, second_ref = _second_derivatives(_torch_bn, (x, w, b), use)
    first, second = _second_derivatives(_fast_bn, (x, w, b), use)
    for got, ref in zip(first + second, first_ref + second_ref):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


def test_batch_norm_train_gradgradcheck_and_no_third_order():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(_fast_bn, (x, w, b))
    (gx,) = torch.autograd.grad(_fast_bn(x, w, b).pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="first and second derivatives only"):
        torch.autograd.grad(gx.pow(2).sum(), x, create_graph=True)


def test_batch_norm_train_inside_torch_func():
    x, w, b = torch.randn(4, 6, 2, 3, 3), torch.ones(2), torch.zeros(2)
    per_item = vmap(lambda xi: _fast_bn(xi, w, b))(x)
    assert torch.allclose(per_item, torch.stack([_torch_bn(xi, w, b) for xi in x]))
    gw = grad(lambda w: _fast_bn(x[0], w, b).pow(2).sum())(w)
    assert torch.allclose(gw, grad(lambda w: _torch_bn(x[0], w, b).pow(2).sum())(w))


@pytest.mark.parametrize(
    "shape, kernel",
    [((3, 4, 8, 8), 2), ((2, 3, 7, 7), 2), ((2, 3, 5, 1), (2, 1)), ((1, 2, 6, 6), 3)],
)
def test_max_pool2d_gather_equals_torch_with_ties(shape, kernel):
    g = torch.Generator().manual_seed(1)
    # integer values: many ties inside the windows, where the chosen index matters
    x = torch.randint(0, 3, shape, generator=g).double().requires_grad_(True)
    ref = F.max_pool2d(x, kernel)
    out = max_pool2d_gather(x, kernel)
    assert torch.equal(out, ref)
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64, requires_grad=True)
    (g_ref,) = torch.autograd.grad(ref, x, gy, create_graph=True)
    (g_out,) = torch.autograd.grad(out, x, gy, create_graph=True)
    assert torch.equal(g_out, g_ref)  # same argmax, ties included
    v = torch.randn(shape, generator=g, dtype=torch.float64)  # the double backward
    assert torch.equal(torch.autograd.grad(g_out, gy, v)[0], torch.autograd.grad(g_ref, gy, v)[0])
    m = IndexMaxPool2d(kernel)
    assert isinstance(m, torch.nn.MaxPool2d) and torch.equal(m(x), ref)
    padded = IndexMaxPool2d(kernel, padding=1) if kernel == 3 else None
    if padded is not None:  # other settings take torch's path
        assert torch.equal(padded(x), F.max_pool2d(x, kernel, padding=1))


def test_conv4_meta_gradient_unchanged_by_the_fast_layers():
    """Second-order MAML through Conv4: fast layers vs torch's BatchNorm and pooling.

    The reference is the inner-loop benchmark's baseline network: the same
    weights with torch's ``max_pool2d``, ``F.batch_norm`` and the textbook
    support-statistics formula; both go through fewmed's own inner loop.
    """
    from fewmed.benchmarks.inner_loop import _classic_order
    from fewmed.fewshot._inner_loop import meta_batch_losses

    torch.manual_seed(0)
    net = Conv4(3, 2, 8, 12, norm="reference").double()
    torch_net = _classic_order(net)
    assert not any(isinstance(m, IndexMaxPool2d) for m in torch_net.modules())
    XS = torch.rand(2, 6, 3, 12, 12, dtype=torch.float64)  # noqa: N806
    XQ = torch.rand(2, 8, 3, 12, 12, dtype=torch.float64)  # noqa: N806
    YS, YQ = torch.tensor([[0, 1] * 3] * 2), torch.tensor([[0, 1] * 4] * 2)  # noqa: N806

    def meta_grad(model):
        losses, _ = meta_batch_losses(model, XS, YS, XQ, YQ, lr=0.1, steps=2, backend="autograd")
        return torch.autograd.grad(losses.sum(), list(model.parameters()))

    for a, b in zip(meta_grad(net), meta_grad(torch_net)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_reference_batchnorm_support_statistics_path_matches_textbook_formula():
    """The n_ref path (x * scale + shift) equals (x - mean) / std * w + b, with gradients."""
    from fewmed.nn import ReferenceBatchNorm2d

    g = torch.Generator().manual_seed(3)
    bn = ReferenceBatchNorm2d(4).double()
    with torch.no_grad():
        bn.weight.normal_(generator=g)
        bn.bias.normal_(generator=g)
    x = (3 + torch.randn(9, 4, 5, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    bn.n_ref = 4
    ref = x[:4]
    mean = ref.mean(dim=(0, 2, 3), keepdim=True)
    var = (ref - mean).square().mean(dim=(0, 2, 3), keepdim=True)
    textbook = (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1)
    textbook = textbook + bn.bias.view(1, -1, 1, 1)
    out = bn(x)
    torch.testing.assert_close(out, textbook, rtol=1e-12, atol=1e-12)
    v = torch.randn(out.shape, generator=g, dtype=torch.float64)
    inputs = (x, bn.weight, bn.bias)
    for a, b in zip(torch.autograd.grad(out, inputs, v), torch.autograd.grad(textbook, inputs, v)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
