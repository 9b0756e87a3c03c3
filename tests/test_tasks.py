"""fewmed.fewshot._tasks: the seeded task stream of meta-training and validation."""

import numpy as np
import torch

from fewmed.fewshot._tasks import TaskDataset
from fewmed.model_selection import EpisodeSampler


def _dataset(**kw):
    X = torch.arange(60, dtype=torch.float32).reshape(60, 1, 1, 1).expand(60, 1, 4, 4)
    y = np.repeat([0, 1, 2], 20)
    args = dict(n_way=2, n_shot=2, n_query=3, seed=0, n_tasks=10)
    return TaskDataset(X, y, **{**args, **kw})


def test_task_dataset_is_seeded_by_task_number():
    a, b = _dataset(), _dataset(tasks_per_epoch=4)
    b.start = 4  # the second epoch of b starts at task 4
    for i in range(4):
        ta, ya = a[4 + i]
        tb, yb = b[i]
        assert torch.equal(ta["xs"], tb["xs"]) and torch.equal(ya, yb)
    assert not torch.equal(a[0][0]["xs"], a[1][0]["xs"])
    task, yq = a[0]
    assert task["xs"].shape == (4, 1, 4, 4) and task["xq"].shape == (6, 1, 4, 4)
    assert task["ys"].tolist() == [0, 0, 1, 1] and yq.tolist() == [0, 0, 0, 1, 1, 1]
    # support and query never share an image
    assert not set(task["xs"][:, 0, 0, 0].tolist()) & set(task["xq"][:, 0, 0, 0].tolist())


def test_task_dataset_epochs():
    ds = _dataset(tasks_per_epoch=4)
    assert ds.n_epochs(0) == 3 and ds.n_epochs(6) == 2 and ds.n_epochs(10) == 0
    lengths = []
    for start in (0, 4, 8):
        ds.start = start
        lengths.append(len(ds))
    assert lengths == [4, 4, 2]
    ds.start = 6  # a resumed run: the epoch ends at the next multiple of 4
    assert len(ds) == 2


def test_task_t_is_the_samplers_draw_with_seed_and_number():
    """One sampling path: item t is EpisodeSampler.draw(index, default_rng([seed, t]))."""
    ds = _dataset(seed=3)
    sampler = EpisodeSampler(2, 2, 3)
    index = sampler.index(np.repeat([0, 1, 2], 20))
    for t in (0, 5, 9):
        ep = sampler.draw(index, np.random.default_rng([3, t]))
        task, yq = ds[t]
        assert torch.equal(
            task["xs"][:, 0, 0, 0], torch.as_tensor(ep.support_idx, dtype=torch.float32)
        )
        assert torch.equal(
            task["xq"][:, 0, 0, 0], torch.as_tensor(ep.query_idx, dtype=torch.float32)
        )
        assert yq.tolist() == ep.query_y.tolist()
