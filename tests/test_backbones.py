"""fewmed's backbones, build_backbone, the decoder and reference BatchNorm (fewmed/nn)."""

import pytest
import torch

from fewmed.nn import (
    VGG,
    Conv4,
    Decoder,
    ReferenceBatchNorm2d,
    ResNet,
    build_backbone,
    make_decoder,
)


@pytest.mark.parametrize("size", [1, 5, 28, (30, 44), 84])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_conv4_any_size_and_channels(size, channels):
    net = Conv4(in_channels=channels, n_classes=3, n_filters=8, input_shape=size)
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.rand(2, channels, h, w)
    assert net(x).shape == (2, 3)
    fmap = net.forward_features(x)
    assert tuple(fmap.shape[1:]) == net.feature_shape
    assert make_decoder(net)(fmap).shape == x.shape


def test_conv4_structure_matches_paper():
    net = Conv4(n_filters=64)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and all(c.kernel_size == (3, 3) and c.out_channels == 64 for c in convs)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 4
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.modules()) == 4
    assert net.feature_shape == (64, 1, 1)  # 28 -> 14 -> 7 -> 3 -> 1


def test_resnet_and_builder():
    net = build_backbone("resnet18", in_channels=1, input_shape=28, n_classes=5, n_filters=8)
    assert isinstance(net, ResNet) and net(torch.rand(2, 1, 28, 28)).shape == (2, 5)
    user = Conv4(n_filters=4, n_classes=2)
    built = build_backbone(user, in_channels=3, input_shape=28, n_classes=2)
    assert built is not user
    with pytest.raises(ValueError, match="not a known backbone"):
        build_backbone("alexnet", in_channels=3, input_shape=28, n_classes=2)
    net.reset_head(7)
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 7)


@pytest.mark.parametrize("norm", [None, "none"])
def test_resnet_without_norm_keeps_convolution_biases(norm):
    # a convolution followed by no normalisation needs its bias; both spellings
    # of "no normalisation" must build the same network
    net = ResNet(n_filters=4, n_classes=2, norm=norm)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert all(c.bias is not None for c in net.modules() if isinstance(c, torch.nn.Conv2d))
    assert net(torch.rand(2, 3, 28, 28)).shape == (2, 2)


@pytest.mark.parametrize("size", [28, (30, 20), 5, 1])
def test_vgg_any_size_structure_and_decoder(size):
    net = build_backbone("vgg", in_channels=3, input_shape=size, n_classes=7, n_filters=4)
    assert isinstance(net, VGG)
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.rand(2, 3, h, w)
    assert net(x).shape == (2, 7)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8, 16, 16]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 6
    fmap = net.forward_features(x)
    assert tuple(fmap.shape[1:]) == net.feature_shape and net.feature_dim == 16
    assert make_decoder(net)(fmap).shape == x.shape
    if size == 28:
        assert net.feature_shape == (16, 3, 3)  # 28 -> 14 -> 7 -> 3


def test_vgg_options_and_errors():
    plain = VGG(n_filters=4, n_classes=2, n_blocks=2, norm=None, dropout=0.5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert all(c.bias is not None for c in plain.modules() if isinstance(c, torch.nn.Conv2d))
    plain.eval()
    x = torch.rand(3, 3, 28, 28)
    assert torch.equal(plain(x), plain(x))  # dropout only in training mode
    with pytest.raises(ValueError, match="n_blocks"):
        VGG(n_blocks=0)
    with pytest.raises(ValueError, match="dropout"):
        VGG(dropout=1.0)


def test_decoder_output_range():
    dec = Decoder((16, 3, 3), (3, 28, 28), n_blocks=2)
    out = dec(torch.randn(4, 16, 3, 3))
    assert out.shape == (4, 3, 28, 28) and out.min() >= 0 and out.max() <= 1


def test_decoder_scale_keeps_convolutions_off_full_resolution():
    dec = Decoder((16, 1, 1), (3, 28, 28), n_blocks=2, scale=0.5)
    sizes = []
    hook = lambda m, i, o: sizes.append(tuple(i[0].shape[-2:]))  # noqa: E731
    for m in dec.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(hook)
    out = dec(torch.randn(2, 16, 1, 1))
    assert out.shape == (2, 3, 28, 28) and out.min() >= 0 and out.max() <= 1
    assert max(sizes) == (14, 14)  # every convolution works at half resolution
    with pytest.raises(ValueError, match="scale"):
        Decoder((16, 1, 1), (3, 28, 28), scale=0)


def test_reference_batchnorm_uses_reference_statistics():
    bn = ReferenceBatchNorm2d(3)
    support, others = torch.randn(4, 3, 5, 5), torch.randn(6, 3, 5, 5) * 10 + 3
    bn.n_ref = 4
    a = bn(torch.cat([support, others[:1]]))[4:]
    b = bn(torch.cat([support, others]))[4:5]
    torch.testing.assert_close(a, b)  # a prediction ignores its batch-mates
    bn.n_ref = None
    ref = torch.nn.functional.batch_norm(support, None, None, training=True)
    torch.testing.assert_close(bn(support), ref)
    assert list(bn.buffers()) == []  # nothing carried between tasks
