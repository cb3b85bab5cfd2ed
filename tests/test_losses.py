import math

import pytest
import torch
import torch.nn.functional as F

from lptlib.objectives import AGCL, LOSSES, BalancedSoftmax, Focal, LogitAdjusted, build_loss, matching_loss

COUNTS = [500, 120, 30, 5]


def batch(seed=0, n=8, c=4):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, generator=g) * 2 - 1, torch.randint(0, c, (n,), generator=g)


def test_la_with_tau_zero_is_ce_and_la_against_a_direct_computation():
    z, y = batch()
    torch.testing.assert_close(LogitAdjusted(COUNTS, tau=0.0)(z, y), F.cross_entropy(z, y))
    prior = torch.tensor(COUNTS, dtype=torch.float32) / sum(COUNTS)
    torch.testing.assert_close(LogitAdjusted(COUNTS, tau=1.5)(z, y), F.cross_entropy(z + 1.5 * prior.log(), y))


def test_bs_against_a_direct_computation_and_equals_la_tau_one():
    z, y = batch(1)
    adjusted = z + torch.tensor(COUNTS, dtype=torch.float32).log()
    direct = -(adjusted.gather(1, y[:, None]).squeeze(1) - adjusted.logsumexp(1)).mean()
    torch.testing.assert_close(BalancedSoftmax(COUNTS)(z, y), direct)
    torch.testing.assert_close(BalancedSoftmax(COUNTS)(z, y), LogitAdjusted(COUNTS, tau=1.0)(z, y))


def test_focal_against_a_direct_computation():
    z, y = batch(2)
    p = F.softmax(z, 1)[torch.arange(len(y)), y]
    torch.testing.assert_close(Focal(2.0)(z, y), (-((1 - p) ** 2) * p.log()).mean())
    torch.testing.assert_close(Focal(0.0)(z, y), F.cross_entropy(z, y))


def test_agcl_reduces_to_ce_on_scaled_cosines():
    c, y = batch(3)
    loss = AGCL(COUNTS, alpha=0.0, margin=0.0, gamma_pos=0.0, gamma_neg=0.0, smoothing=0.0, scale=20.0)
    torch.testing.assert_close(loss(c, y), F.cross_entropy(20.0 * c, y))


def test_agcl_against_a_direct_computation():
    c, y = batch(4)
    loss = AGCL(COUNTS)  # LPT's class-balanced branch: alpha .5, m .1, s 20, 0/4, smoothing .1
    torch.manual_seed(7)
    got = loss(c, y)
    torch.manual_seed(7)
    eps = (torch.randn_like(c) / 3).clamp(-1, 1)
    logn = torch.tensor(COUNTS, dtype=torch.float32).log()
    mu = (logn.max() - logn) / (logn.max() - logn).max()
    ct = c - 0.5 * eps.abs() * mu
    ct[torch.arange(len(y)), y] -= 0.1
    logp = F.log_softmax(20 * ct, 1)
    total = 0.0
    for i in range(len(y)):
        for j in range(4):
            p = logp[i, j].exp()
            w = (1 - p) ** 0.0 if j == y[i] else p**4.0
            target = 0.9 * (j == y[i]) + 0.1 / 4
            total = total - target * w * logp[i, j]
    torch.testing.assert_close(got, total / len(y))


def test_agcl_noise_only_lowers_cosines_and_spares_the_head_class():
    loss = AGCL(COUNTS, alpha=0.5)
    c = torch.zeros(2000, 4)
    noisy = loss.perturb(c)
    assert (noisy <= 0).all()
    assert (noisy[:, 0] == 0).all()  # the most frequent class gets no cloud
    assert noisy[:, 3].min() >= -0.5 and noisy[:, 3].mean() < noisy[:, 1].mean() < 0  # rarer: larger cloud
    assert not torch.equal(loss.perturb(c), noisy)  # fresh noise every call


def test_agcl_weights_are_not_detached():
    c, y = batch(5)
    loss = AGCL(COUNTS, alpha=0.0, gamma_pos=0.5, gamma_neg=8.0)
    c1 = c.clone().requires_grad_(True)
    loss(c1, y).backward()
    c2 = c.clone().requires_grad_(True)  # the same loss with the focusing weights detached
    onehot = F.one_hot(y, 4).float()
    logp = F.log_softmax(20 * (c2 - 0.1 * onehot), 1)
    w = torch.where(onehot.bool(), (1 - logp.exp()) ** 0.5, logp.exp() ** 8).detach()
    (-(((0.9 * onehot + 0.1 / 4) * w * logp).sum(1)).mean()).backward()
    assert not torch.allclose(c1.grad, c2.grad)


def test_agcl_gradient_stays_finite_when_the_target_probability_saturates():
    y = torch.tensor([0, 1])
    c = torch.full((2, 4), -1.0)
    c[0, 0] = c[1, 1] = 1.0  # p_y rounds to 1 at scale 20
    c.requires_grad_(True)
    loss = AGCL(COUNTS, alpha=0.0, gamma_pos=0.5, gamma_neg=8.0)  # LPT's instance-balanced branch
    loss(c, y).backward()
    assert torch.isfinite(c.grad).all()


def test_agcl_runs_on_gpu_when_available():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    c, y = batch(6)
    assert torch.isfinite(AGCL(COUNTS).cuda()(c.cuda(), y.cuda()))


def test_registry():
    for name in LOSSES:
        loss = build_loss(name, COUNTS)
        z, y = batch(7)
        assert torch.isfinite(loss(z, y))
    assert build_loss("agcl", COUNTS).takes_cosine and not build_loss("la", COUNTS).takes_cosine


def test_matching_loss():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    idx = torch.tensor([[0, 2], [1, 2]])
    expected = -((1 + 1 / math.sqrt(2)) + (1 + 1 / math.sqrt(2))) / 2
    torch.testing.assert_close(matching_loss(q, keys, idx), torch.tensor(expected))
