import numpy as np
import torch
from torch.utils.data import TensorDataset

from lptlib.data import ClassAwareSampler, InfiniteLoader, ShuffleSampler, dual_sampling, make_loader

LABELS = np.repeat(np.arange(5), [100, 40, 10, 4, 1])  # long-tailed: 155 items


def test_class_aware_sampler_balances_classes():
    s = ClassAwareSampler(LABELS, num_samples_cls=4, num_samples=5 * 4 * 50, seed=0)
    drawn = LABELS[list(s)]
    np.testing.assert_array_equal(np.bincount(drawn), [200] * 5)


def test_class_aware_sampler_visits_in_groups_of_four_and_cycles_classes():
    s = ClassAwareSampler(LABELS, num_samples_cls=4, num_samples=400, seed=3)
    drawn = LABELS[list(s)].reshape(-1, 4)
    assert (drawn == drawn[:, :1]).all()  # each visit = 4 images of one class
    visits = drawn[:, 0].reshape(-1, 5)  # every 5 visits cover every class once
    assert all(sorted(v) == list(range(5)) for v in visits)


def test_class_aware_sampler_cycles_within_a_class_before_repeating():
    s = ClassAwareSampler(LABELS, num_samples_cls=4, num_samples=5 * 4 * 10, seed=0)
    idx = np.array(list(s))
    mid = idx[LABELS[idx] == 1]  # 40 draws of a 40-image class: each image once
    assert sorted(mid) == sorted(np.flatnonzero(LABELS == 1))


def test_class_aware_sampler_epochs_are_deterministic_and_differ():
    s = ClassAwareSampler(LABELS, seed=7)
    first = list(s)
    assert list(s) == first and len(first) == len(LABELS)
    s.set_epoch(1)
    assert list(s) != first


def test_shuffle_sampler_is_a_permutation_per_epoch():
    s = ShuffleSampler(10, seed=0)
    a = list(s)
    s.set_epoch(1)
    b = list(s)
    assert sorted(a) == sorted(b) == list(range(10)) and a != b


def _loader(sampler, batch=8):
    ds = TensorDataset(torch.arange(len(LABELS)), torch.as_tensor(LABELS))
    return make_loader(ds, batch, sampler)


def test_infinite_loader_continues_across_epochs_without_restarting():
    sampler = ShuffleSampler(len(LABELS), seed=0)
    it = InfiniteLoader(_loader(sampler, batch=50))
    seen = [next(it)[0] for _ in range(8)]  # 155 items = 4 batches per epoch (last one short)
    assert it.epoch == 1
    first_epoch = torch.cat(seen[:4])
    assert sorted(first_epoch.tolist()) == list(range(len(LABELS)))
    sampler.set_epoch(0)
    assert first_epoch.tolist() == list(sampler)
    second = torch.cat(seen[4:8]).tolist()
    sampler.set_epoch(1)
    assert second == list(sampler)


def test_dual_sampling_yields_class_and_instance_balanced_pairs():
    cb = InfiniteLoader(_loader(ClassAwareSampler(LABELS, num_samples_cls=4, num_samples=160, seed=0), batch=20))
    ib = InfiniteLoader(_loader(ShuffleSampler(len(LABELS), seed=0), batch=20))
    pairs = list(dual_sampling(cb, ib, steps=30))
    assert len(pairs) == 30
    cb_labels = torch.cat([p[0][1] for p in pairs]).numpy()
    ib_labels = torch.cat([p[1][1] for p in pairs]).numpy()
    np.testing.assert_array_equal(np.bincount(cb_labels), [120] * 5)  # 600 draws, balanced
    assert np.bincount(ib_labels)[0] > 3 * np.bincount(ib_labels)[2]  # instance-balanced keeps the tail rare
    assert cb.epoch >= 3  # the loaders were continued, not recreated
