"""BackboneAdapter, BackboneProtocol and build_backbone with any torch module (fewmed/nn)."""

import copy
import functools
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from fewmed.nn import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneAdapter,
    BackboneProtocol,
    Conv4,
    build_backbone,
    follows_protocol,
    make_decoder,
)

SHAPE = (3, 16, 16)


def conv_body(c_in=3, width=8):
    """A convolutional feature extractor: no Linear, 4-D output (n, width, 4, 4)."""
    return nn.Sequential(
        nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(4)
    )


def classifier(n_out=5, width=8):
    """conv_body + pooling + a hidden Linear + the Linear head."""
    return nn.Sequential(
        conv_body(width=width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 12),
        nn.ReLU(),
        nn.Linear(12, n_out),
    )


def x_batch(n=4, shape=SHAPE, seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ adapter
def test_head_auto_finds_the_last_linear_and_keeps_the_output():
    net = classifier().eval()
    ad = BackboneAdapter(net, input_shape=SHAPE).eval()
    assert ad.head_path == "5" and ad.n_classes == 5
    assert ad.feature_shape == (12, 1, 1) and ad.feature_dim == 12
    x = x_batch()
    torch.testing.assert_close(ad(x), net(x))  # same computation, same weights
    assert ad.head is not net[5] and ad.head.weight.data_ptr() != net[5].weight.data_ptr()
    assert isinstance(net[5], nn.Linear)  # the user's module is untouched
    assert isinstance(ad, BackboneProtocol) and follows_protocol(ad)


def test_protocol_shapes_and_reset_head():
    ad = BackboneAdapter(classifier(), input_shape=SHAPE, n_classes=3)
    assert ad.n_classes == 3 and ad.head.out_features == 3  # other size: new head
    x = x_batch()
    fmap = ad.forward_features(x)
    assert fmap.shape == (4, 12, 1, 1) and tuple(fmap.shape[1:]) == ad.feature_shape
    assert ad.embed(fmap).shape == (4, 12)
    torch.testing.assert_close(ad(x), ad.forward_head(fmap))
    for n in (2, 7):
        ad.reset_head(n)
        assert ad(x).shape == (4, n) and ad.n_classes == n
        assert ad.head.in_features == ad.feature_dim


def test_reset_head_is_seeded_by_torch_rng():
    ad = BackboneAdapter(classifier(), input_shape=SHAPE)
    heads = []
    for _ in range(2):
        torch.manual_seed(3)
        ad.reset_head(4)
        heads.append(ad.head.weight.detach().clone())
    torch.testing.assert_close(heads[0], heads[1])


def test_sequential_without_linear_gets_a_new_head_on_pooled_features():
    ad = BackboneAdapter(conv_body(), input_shape=SHAPE, n_classes=3)
    assert ad.head_path is None and ad.pool == "avg"
    assert ad.feature_shape == (8, 4, 4) and ad.feature_dim == 8
    x = x_batch()
    assert ad(x).shape == (4, 3)
    fmap = ad.forward_features(x)
    torch.testing.assert_close(ad.embed(fmap), fmap.mean(dim=(2, 3)))
    flat = BackboneAdapter(conv_body(), input_shape=SHAPE, n_classes=3, pool="flatten")
    assert flat.feature_dim == 8 * 4 * 4 and flat(x).shape == (4, 3)
    extractor = BackboneAdapter(conv_body(), input_shape=SHAPE)  # no head, no n_classes
    assert extractor.n_classes is None and extractor(x).shape == (4, 8)
    assert make_decoder(ad)(fmap).shape == x.shape  # CDC's decoder fits the map


def test_head_none_and_named_head():
    x = x_batch()
    whole = BackboneAdapter(classifier(), input_shape=SHAPE, head=None, n_classes=2)
    assert whole.feature_shape == (5, 1, 1) and whole(x).shape == (4, 2)
    # the hidden Linear as head: the final Linear then gets 12 -> 8 features and fails
    with pytest.raises(ValueError, match="head '3' must be the module's final layer"):
        BackboneAdapter(classifier(), input_shape=SHAPE, head="3")
    named = BackboneAdapter(classifier(), input_shape=SHAPE, head="5")
    assert named.head_path == "5" and named.n_classes == 5
    with pytest.raises(ValueError, match="nn.Linear"):
        BackboneAdapter(classifier(), input_shape=SHAPE, head="2")
    with pytest.raises(ValueError, match="not a submodule"):
        BackboneAdapter(classifier(), input_shape=SHAPE, head="fc")


def test_flattening_head_is_detected():
    net = nn.Sequential(conv_body(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    ad = BackboneAdapter(net, input_shape=SHAPE)
    assert ad.feature_shape == (128, 1, 1) and ad.feature_dim == 128
    net.eval(), ad.eval()
    torch.testing.assert_close(ad(x_batch()), net(x_batch()))


def test_normalisation_follows_mean_and_std():
    net = classifier().eval()
    ad = BackboneAdapter(net, input_shape=SHAPE, mean=IMAGENET_MEAN, std=IMAGENET_STD).eval()
    x = x_batch()
    by_hand = torch.empty_like(x)
    for c in range(3):
        by_hand[:, c] = (x[:, c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    torch.testing.assert_close(ad.normalise(x), by_hand)
    torch.testing.assert_close(ad(x), net(by_hand))
    torch.testing.assert_close(ad.forward_features(x), ad.body(by_hand)[:, :, None, None])
    plain = BackboneAdapter(net, input_shape=SHAPE).eval()
    assert not torch.allclose(plain(x), ad(x))
    one = BackboneAdapter(net, input_shape=SHAPE, mean=0.5, std=0.25).eval()
    torch.testing.assert_close(one(x), net((x - 0.5) / 0.25))
    with pytest.raises(ValueError, match="channels"):
        BackboneAdapter(net, input_shape=SHAPE, mean=(0.5, 0.5))
    with pytest.raises(ValueError, match="positive"):
        BackboneAdapter(net, input_shape=SHAPE, std=0.0)


def test_channel_mismatch_names_module_and_what_to_do():
    with pytest.raises(ValueError, match=r"module=Sequential.*expects 1 channels.*in_channels=3"):
        BackboneAdapter(conv_body(c_in=1), input_shape=SHAPE)
    with pytest.raises(ValueError, match="module=Sequential"):
        build_backbone(conv_body(c_in=1), in_channels=3, input_shape=16, n_classes=2)


def test_bad_modules_raise_documented_errors():
    with pytest.raises(TypeError, match="module must be"):
        build_backbone(42, in_channels=3, input_shape=16, n_classes=2)
    with pytest.raises(TypeError, match="module must be"):
        BackboneAdapter("not a module", input_shape=SHAPE)
    with pytest.raises(TypeError, match="not an nn.Module"):
        build_backbone(lambda: 3, in_channels=3, input_shape=16, n_classes=2)
    with pytest.raises(TypeError, match="could not be called"):
        build_backbone(conv_body, in_channels=3, input_shape=16, n_classes=2, depth=3)
    with pytest.raises(ValueError, match="not a known backbone"):
        build_backbone("alexnet", in_channels=3, input_shape=16, n_classes=2)
    with pytest.raises(ValueError, match="input_shape"):
        BackboneAdapter(conv_body(), input_shape=(16, 16))
    with pytest.raises(ValueError, match="pool"):
        BackboneAdapter(conv_body(), input_shape=SHAPE, pool="max")


def test_pickle_and_deepcopy_round_trip():
    ad = BackboneAdapter(classifier(), input_shape=SHAPE, n_classes=3, mean=IMAGENET_MEAN).eval()
    x = x_batch()
    for twin in (pickle.loads(pickle.dumps(ad)), copy.deepcopy(ad)):
        torch.testing.assert_close(twin(x), ad(x))
        assert twin.feature_shape == ad.feature_shape and twin.head_path == ad.head_path
        twin.reset_head(6)
        assert twin(x).shape == (4, 6) and ad(x).shape == (4, 3)


def test_dry_run_keeps_training_modes():
    net = classifier()
    net[0][1].eval()  # a frozen BatchNorm stays frozen
    ad = BackboneAdapter(net, input_shape=SHAPE)
    assert ad.body[0][1].training is False and ad.body[0][0].training is True


# ------------------------------------------------------------------ build_backbone
def test_build_backbone_factories_get_only_their_own_arguments():
    calls = []

    def factory(width=8):
        calls.append(width)
        return classifier(width=width)

    net = build_backbone(
        factory, in_channels=3, input_shape=16, n_classes=2, n_filters=64, width=4, norm="batch"
    )
    assert calls == [4]  # no in_channels / n_classes / n_filters / norm
    assert isinstance(net, BackboneAdapter) and net.n_classes == 2 and net.input_shape == SHAPE
    part = functools.partial(BackboneAdapter, conv_body())  # a factory that is not a class
    with pytest.raises(TypeError, match="could not be called"):
        build_backbone(part, in_channels=3, input_shape=16, n_classes=2)


def test_build_backbone_keeps_fewmed_classes():
    net = build_backbone(Conv4, in_channels=1, input_shape=16, n_classes=3, n_filters=4)
    assert type(net) is Conv4 and net.head.out_features == 3

    class Mine(nn.Module):  # written for fewmed: takes its arguments, no protocol
        def __init__(self, in_channels, n_classes, input_shape, n_filters=2):
            super().__init__()
            self.lin = nn.Linear(in_channels * input_shape[0] * input_shape[1], n_classes)

        def forward(self, x):
            return self.lin(x.flatten(1))

    mine = build_backbone(Mine, in_channels=1, input_shape=(4, 4), n_classes=2, n_filters=3)
    assert type(mine) is Mine


def test_build_backbone_instances_get_their_own_head_size():
    """RSKD's teachers: one instance, a head per class subset."""
    user = Conv4(n_filters=4, n_classes=7, input_shape=16)
    teachers = [build_backbone(user, in_channels=3, input_shape=16, n_classes=n) for n in (3, 2, 7)]
    assert [t.head.out_features for t in teachers] == [3, 2, 7]
    assert [t.n_classes for t in teachers] == [3, 2, 7]
    assert all(t is not user for t in teachers) and user.head.out_features == 7
    torch.testing.assert_close(teachers[2].head.weight, user.head.weight)  # same size: kept
    kept = build_backbone(user, in_channels=3, input_shape=16, n_classes=None)
    assert kept.n_classes == 7
    plain = [
        build_backbone(classifier(), in_channels=3, input_shape=16, n_classes=n) for n in (3, 2)
    ]
    assert [p(x_batch()).shape[1] for p in plain] == [3, 2]
    again = build_backbone(plain[0], in_channels=3, input_shape=16, n_classes=4)
    assert type(again) is BackboneAdapter and again.n_classes == 4 and plain[0].n_classes == 3


def test_build_backbone_adapter_instance_follows_the_images():
    ad = BackboneAdapter(conv_body(), input_shape=SHAPE, n_classes=2, pool="flatten")
    net = build_backbone(ad, in_channels=3, input_shape=32, n_classes=2)
    assert net.input_shape == (3, 32, 32) and net.feature_shape == (8, 8, 8)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 2) and ad.input_shape == SHAPE


# ------------------------------------------------------------------ estimators
def _sequential(width=8):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 4),
    )


def test_reptile_accepts_a_plain_sequential(lesions):
    from fewmed import ReptileInitializer

    X, y = lesions
    src = y < 3
    rep = ReptileInitializer(
        module=_sequential(),
        n_way=3,
        n_shot=2,
        n_query=2,
        n_iterations=2,
        meta_batch_size=1,
        n_inner_steps=1,
        inner_batch_size=4,
        max_epochs=1,
        n_adapt_steps=1,
        n_score_tasks=1,
        verbose=0,
        random_state=0,
    ).fit(X[src], y[src])
    assert isinstance(rep.module_, BackboneAdapter)
    assert rep.init_module(4).head.out_features == 4
    rep.adapt(X[~src], y[~src])
    assert rep.predict(X[~src][:5]).shape == (5,)


def test_fine_tune_accepts_a_plain_sequential(lesions):
    from fewmed import FineTuneClassifier

    X, y = lesions
    src = y < 3
    ft = FineTuneClassifier(
        module=_sequential(), max_epochs=1, n_adapt_steps=2, augment=False, random_state=0
    ).fit(X[src], y[src])
    ft.adapt(X[~src][::4], y[~src][::4])
    assert set(ft.predict(X[~src][:6])) <= set(np.unique(y[~src]))


@pytest.fixture(scope="module")
def small_lesions():
    from fewmed.datasets import make_synthetic_lesions

    d = make_synthetic_lesions(n_classes=3, n_per_class=6, size=32, random_state=0)
    return d.images, d.target


def _densenet(out_channels=2):
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    return nets.DenseNet121(spatial_dims=2, in_channels=3, out_channels=out_channels)


def test_monai_densenet_in_cdc_with_decoder(small_lesions):
    from fewmed import CDCClassifier

    X, y = small_lesions
    cdc = CDCClassifier(
        module=_densenet(),
        max_epochs=1,
        batch_size=6,
        decoder=True,
        decoder_filters=8,  # the default halves DenseNet's 1024 channels: slow on a CPU
        random_state=0,
    ).fit(X, y)
    assert isinstance(cdc.module_, BackboneAdapter)
    assert cdc.module_.head_path == "class_layers.out" and cdc.module_.n_classes == 3
    assert cdc.module_.feature_shape == (1024, 1, 1)
    assert cdc.predict_proba(X[:4]).shape == (4, 3)


def test_monai_densenet_in_protonet(small_lesions):
    from fewmed import ProtoNetClassifier

    X, y = small_lesions
    proto = ProtoNetClassifier(
        module=_densenet(),
        n_way=2,
        n_shot=1,
        n_query=1,
        meta_batch_size=1,
        n_iterations=2,
        augment=False,
        verbose=0,
        random_state=0,
    ).fit(X, y)
    proto.adapt(X[::2], y[::2])
    assert proto.predict(X[1::2]).shape == (len(X[1::2]),)
