"""The one fine-tuning path: SupervisedNet, fine_tune / pretrain, transfer, train_steps."""

import numpy as np
import pytest
import torch
from skorch.callbacks import Checkpoint

from fewmed._finetune import (
    SupervisedNet,
    fine_tune,
    pretrain,
    remove_batchnorm,
    train_steps,
    transfer,
)
from fewmed._validation import check_images
from fewmed.nn import VGG, Conv4, ReferenceBatchNorm2d, ResNet


def _bn_layers(module):
    kinds = (torch.nn.modules.batchnorm._BatchNorm, ReferenceBatchNorm2d)
    return [m for m in module.modules() if isinstance(m, kinds)]


@pytest.fixture(scope="module")
def backbone(toy):
    X, y = toy
    net, _ = pretrain("conv4", X, y, n_filters=4, max_epochs=2, random_state=0)
    return net


# ----------------------------------------------------------------- fine_tune / pretrain
def test_early_stopping_stops_and_restores_the_best_epoch(toy):
    X, y = toy
    # validation labels that contradict the training labels: the better the net
    # learns, the worse the validation loss, so early stopping must stop
    flipped = np.roll(np.unique(y), 1)[np.searchsorted(np.unique(y), y)]
    net = fine_tune(
        "conv4", X, y, X_val=X, y_val=flipped, n_filters=4, max_epochs=20, patience=2,
        lr=1e-2, random_state=0,
    )  # fmt: skip
    losses = net.history[:, "valid_loss"]
    best = int(np.argmin(losses))
    assert len(losses) < 20 and len(losses) - 1 - best == 2  # stopped `patience` after best
    proba = net.predict_proba(X)
    codes = np.searchsorted(net.classes_, flipped)
    restored = -np.log(proba[np.arange(len(codes)), codes]).mean()
    assert restored == pytest.approx(losses[best], rel=1e-4)


def test_fine_tuning_separable_data_beats_chance(toy):
    X, y = toy
    net = fine_tune(
        "conv4", X, y, validation_fraction=0.25, n_filters=4, max_epochs=15, patience=5,
        batch_size=16, lr=3e-3, random_state=0,
    )  # fmt: skip
    assert "early_stopping" in dict(net.callbacks_) and "valid_qwk" in net.history[-1]
    recall = [np.mean(net.predict(X[y == c]) == c) for c in np.unique(y)]
    assert np.mean(recall) > 0.8  # balanced accuracy; chance is 1/3


def test_no_validation_no_early_stopping(toy):
    X, y = toy
    net = fine_tune("conv4", X, y, n_filters=4, max_epochs=2, random_state=0)
    assert len(net.history) == 2 and "early_stopping" not in dict(net.callbacks_)
    assert "valid_loss" not in net.history[-1]
    with pytest.raises(ValueError, match="validation split is empty"):
        fine_tune("conv4", X, y, validation_fraction=0.01, max_epochs=1)


def test_pretrain_is_reproducible_and_leaves_the_global_rng(toy):
    X, y = toy
    state = torch.random.get_rng_state()
    a, hist = pretrain("conv4", X, y, n_filters=4, max_epochs=2, augment=True, random_state=3)
    b, _ = pretrain("conv4", X, y, n_filters=4, max_epochs=2, augment=True, random_state=3)
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.head.out_features == 3 and len(hist) == 2
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_channels_last_is_the_same_function(toy):
    X, y = toy
    kw = dict(n_filters=4, max_epochs=1, random_state=0)
    a = SupervisedNet("conv4", channels_last=True, **kw).fit(X, y)
    b = SupervisedNet("conv4", **kw).fit(X, y)
    assert a.module_.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    # the same training up to float rounding (the convolutions sum in another order)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), atol=5e-3)


def test_supervised_net_copies_a_module_and_checks_its_outputs(toy):
    X, y = toy
    module = Conv4(n_classes=3, n_filters=4)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    net = SupervisedNet(module, max_epochs=1, random_state=0).fit(X, y)
    assert net.module_ is not module
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="2 outputs but y has 3 classes"):
        SupervisedNet(Conv4(n_classes=2, n_filters=4), max_epochs=1).fit(X, y)


def test_checkpoint_is_written(toy, tmp_path):
    X, y = toy
    cp = Checkpoint(monitor="valid_loss_best", dirname=str(tmp_path))
    fine_tune(
        "conv4", X, y, validation_fraction=0.25, n_filters=4, max_epochs=2, checkpoint=cp,
        random_state=0,
    )  # fmt: skip
    assert (tmp_path / "params.pt").exists()


# ----------------------------------------------------------------- transfer
def test_transfer_keeps_every_weight_but_the_head(backbone):
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = transfer(backbone, 5, seed=0)
    new, old = model.state_dict(), backbone.state_dict()
    assert model.head.out_features == 5 and not model.training
    for k in old:
        if k.startswith("head."):
            assert new[k].shape[0] == 5
        else:
            assert torch.equal(new[k], old[k])
    assert all(torch.equal(before[k], old[k]) for k in old)  # the backbone is untouched


def test_the_new_head_is_seeded(backbone):
    state = torch.random.get_rng_state()
    a, b, c = (transfer(backbone, 2, seed=s).head.weight for s in (0, 0, 1))
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("mode", [True, "drop", "fold"])
def test_transfer_removes_batchnorm(backbone, mode):
    assert _bn_layers(transfer(backbone, 2, 0, remove_batchnorm=mode)) == []
    assert _bn_layers(transfer(backbone, 2, 0)) and _bn_layers(backbone)


def test_fold_preserves_the_function():
    nets = (Conv4(n_classes=3, n_filters=4), ResNet(n_classes=3, n_filters=4), VGG(3, 3, 4))
    for net in nets:
        net.train()
        net(torch.rand(16, 3, 28, 28))  # move the running statistics
        net.eval()
        x = torch.rand(5, 3, 28, 28)
        before = net(x)
        after = remove_batchnorm(net, "fold")(x)
        assert _bn_layers(net) == []
        torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="'drop' or 'fold'"):
        remove_batchnorm(Conv4(n_classes=2), "merge")


# ----------------------------------------------------------------- train_steps
class _Recorder(torch.nn.Module):
    """A linear model that records the batches it sees."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(d, 2)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.lin(x)


def test_train_steps_full_batch_draws_no_permutation():
    X, y = torch.randn(6, 3), torch.tensor([0, 1] * 3)
    model, gen = _Recorder(3), torch.Generator().manual_seed(0)
    state = gen.get_state()
    loss = train_steps(model, X, y, 3, gen, lr=1e-2)
    assert torch.equal(gen.get_state(), state) and np.isfinite(loss)
    assert len(model.seen) == 3 and all(torch.equal(s, X) for s in model.seen)
    assert np.isnan(train_steps(model, X, y, 0, gen, lr=1e-2))


def test_train_steps_mini_batches_without_replacement():
    X, y = torch.arange(5.0)[:, None], torch.tensor([0, 1, 0, 1, 0])
    model = _Recorder(1)
    train_steps(model, X, y, 4, torch.Generator().manual_seed(0), lr=1e-2, batch_size=2)
    # the draw order: a permutation, consumed 2 at a time, redrawn when fewer than 2 are left
    gen = torch.Generator().manual_seed(0)
    first, second = torch.randperm(5, generator=gen), torch.randperm(5, generator=gen)
    expected = [first[:2], first[2:4], second[:2], second[2:4]]
    assert [s[:, 0].long().tolist() for s in model.seen] == [e.tolist() for e in expected]


def test_train_steps_mini_batch_of_the_whole_set_equals_full_batch():
    X, y = torch.randn(6, 3), torch.tensor([0, 1] * 3)
    a, b = _Recorder(3), _Recorder(3)
    b.load_state_dict(a.state_dict())
    train_steps(a, X, y, 5, torch.Generator().manual_seed(0), lr=1e-2, betas=(0.0, 0.999))
    train_steps(b, X, y, 5, torch.Generator().manual_seed(0), lr=1e-2, betas=(0.0, 0.999),
                batch_size=6)  # fmt: skip
    torch.testing.assert_close(a.lin.weight, b.lin.weight)  # same set, another order
    assert not torch.equal(a.lin.weight, _Recorder(3).lin.weight)


def test_train_steps_augments_every_batch():
    X, y = torch.zeros(4, 3), torch.tensor([0, 1, 0, 1])
    model = _Recorder(3)

    def shift(x, generator):
        return x + torch.rand(1, generator=generator)

    train_steps(model, X, y, 2, torch.Generator().manual_seed(0), lr=1e-2, augment=shift)
    assert all(s.abs().sum() > 0 for s in model.seen)
    assert not torch.equal(model.seen[0], model.seen[1])


def test_fine_tune_accepts_raw_images_as_validation_data(toy):
    X, y = toy
    Xv = check_images(X[::4])
    net = fine_tune("conv4", X, y, X_val=X[::4], y_val=y[::4], n_filters=4, max_epochs=1)
    np.testing.assert_allclose(net.predict_proba(Xv), net.predict_proba(X[::4]), atol=1e-6)
    assert list(net.classes_) == sorted(set(y))
