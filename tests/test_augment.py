"""Tensor augmentation (fewmed/nn/_augment.py)."""

import pytest
import torch

from fewmed.nn import Augment, Conv4


def test_augment_identity_flip_and_seed():
    x = torch.rand(3, 3, 16, 16)
    ident = Augment(scale=(1, 1), rotation=0, hflip=False, vflip=False, translate=False)
    torch.testing.assert_close(ident(x), x, atol=1e-5, rtol=0)
    flip = Augment(scale=(1, 1), rotation=0, hflip=True, vflip=False, translate=False)
    out = flip(x, generator=torch.Generator().manual_seed(1))
    for i in range(3):
        assert torch.allclose(out[i], x[i], atol=1e-5) or torch.allclose(
            out[i], x[i].flip(-1), atol=1e-5
        )
    aug = Augment()
    a = aug(x, generator=torch.Generator().manual_seed(0))
    b = aug(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, x)
    with pytest.raises(ValueError, match="scale"):
        Augment(scale=(2, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_augment_and_conv4_on_gpu():  # pragma: no cover - no GPU in CI
    x = torch.rand(2, 3, 28, 28, device="cuda")
    assert Augment()(x).device.type == "cuda"
    assert Conv4(n_classes=2).cuda()(x).device.type == "cuda"
