"""The inner-loop backends give the reference meta-gradient."""

import pytest
import torch

from fewmed.fewshot._inner_loop import meta_batch_losses
from fewmed.nn import Conv4


def _problem(seed=0, T=3, k=2, q=3):
    g = torch.Generator().manual_seed(seed)
    XS = torch.rand(T, 2 * k, 3, 12, 12, generator=g, dtype=torch.float64)
    XQ = torch.rand(T, 2 * q, 3, 12, 12, generator=g, dtype=torch.float64)
    YS = torch.arange(2).repeat_interleave(k).repeat(T, 1)
    YQ = torch.arange(2).repeat_interleave(q).repeat(T, 1)
    return XS, YS, XQ, YQ


def _meta_grad(backend, first_order=False):
    torch.manual_seed(0)
    model = Conv4(3, 2, n_filters=4, input_shape=12, norm="reference").double()
    losses, _ = meta_batch_losses(
        model, *_problem(), lr=0.1, steps=3, first_order=first_order, backend=backend
    )
    (losses**2).sum().backward()  # a non-linear meta-loss of the task losses
    return losses.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "backend, first_order",
    [("func", False), ("func", True), ("higher", False), ("threads", False), ("threads", True)],
)
def test_backends_match_autograd_reference(backend, first_order):
    ref_l, ref_g = _meta_grad("autograd", first_order)
    losses, g = _meta_grad(backend, first_order)
    torch.testing.assert_close(losses, ref_l, rtol=1e-9, atol=1e-10)
    for a, b in zip(g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_second_order_differs_from_first_order():
    _, g2 = _meta_grad("func", False)
    _, g1 = _meta_grad("func", True)
    assert max((a - b).abs().max().item() for a, b in zip(g2, g1)) > 1e-6


def test_higher_has_no_first_order_mode():
    with pytest.raises(ValueError, match="first_order=True is not supported"):
        _meta_grad("higher", True)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        meta_batch_losses(Conv4(n_filters=2), *_problem(), lr=0.1, steps=1, backend="jax")


def test_threads_backend_equals_one_thread_loop_and_reproduces():
    # float32: the tasks run on one torch thread each, so the meta-gradient is the
    # one-thread "autograd" loop's, whatever the thread timing; torch's thread
    # count is restored afterwards
    def grads(backend, threads):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            torch.manual_seed(0)
            model = Conv4(3, 2, n_filters=4, input_shape=12, norm="reference")
            XS, YS, XQ, YQ = (t.float() if t.is_floating_point() else t for t in _problem(T=4))
            losses, accs = meta_batch_losses(
                model, XS, YS, XQ, YQ, lr=0.1, steps=2, backend=backend
            )
            (losses**2).sum().backward()
            assert torch.get_num_threads() == threads
            return accs, torch.cat([p.grad.flatten() for p in model.parameters()])
        finally:
            torch.set_num_threads(previous)

    accs, ref = grads("autograd", 1)
    accs_t, got = grads("threads", 2)
    torch.testing.assert_close(accs_t, accs)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads("threads", 2)[1], got, rtol=0, atol=0)
