import numpy as np
import pytest
import torch

from autodrop import AdaBelief


def adabelief64(theta, grads, lr, betas, eps, weight_decay, decoupled, maximize):
    """Zhuang et al. 2020, Algorithm 2, in float64 numpy; returns the trajectory."""
    beta1, beta2 = betas
    theta = theta.astype(np.float64).copy()
    m = np.zeros_like(theta)
    s = np.zeros_like(theta)
    trajectory = []
    for t, g in enumerate(grads, start=1):
        g = -g if maximize else g.copy()
        if weight_decay and decoupled:
            theta = theta * (1 - lr * weight_decay)
        elif weight_decay:
            g = g + weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        s = beta2 * s + (1 - beta2) * (g - m) ** 2 + eps
        m_hat = m / (1 - beta1**t)
        s_hat = s / (1 - beta2**t)
        theta = theta - lr * m_hat / (np.sqrt(s_hat) + eps)
        trajectory.append(theta.copy())
    return trajectory


@pytest.mark.parametrize(
    "config",
    [
        dict(),
        dict(eps=1e-8, betas=(0.8, 0.99)),
        dict(weight_decay=0.1),
        dict(weight_decay=0.1, decoupled_weight_decay=False),
        dict(maximize=True),
    ],
    ids=["defaults", "eps-betas", "decoupled-decay", "coupled-decay", "maximize"],
)
def test_matches_float64_reference(config):
    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=(3, 4))
    grads = [rng.normal(size=(3, 4)) * 10.0 ** rng.integers(-3, 2) for _ in range(12)]
    param = torch.nn.Parameter(torch.tensor(theta0))
    optimizer = AdaBelief([param], lr=0.01, **config)
    full = dict(betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0, decoupled_weight_decay=True, maximize=False)
    full.update(config)
    expected = adabelief64(
        theta0,
        grads,
        0.01,
        full["betas"],
        full["eps"],
        full["weight_decay"],
        full["decoupled_weight_decay"],
        full["maximize"],
    )
    for grad, want in zip(grads, expected, strict=True):
        param.grad = torch.tensor(grad)
        optimizer.step()
        np.testing.assert_allclose(param.detach().numpy(), want, rtol=1e-12, atol=1e-15)
    assert optimizer.state[param]["step"] == len(grads)


def test_parameters_without_gradient_keep_their_own_step_count():
    a = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    optimizer = AdaBelief([a, b], lr=0.1)
    rng = np.random.default_rng(1)
    grads_b = []
    for t in range(4):
        a.grad = torch.tensor(rng.normal(size=2))
        b.grad = None
        if t % 2:
            grads_b.append(rng.normal(size=2))
            b.grad = torch.tensor(grads_b[-1])
        optimizer.step()
    assert optimizer.state[a]["step"] == 4 and optimizer.state[b]["step"] == 2
    want = adabelief64(np.ones(2), grads_b, 0.1, (0.9, 0.999), 1e-16, 0.0, True, False)[-1]
    np.testing.assert_allclose(b.detach().numpy(), want, rtol=1e-12)


def test_closure_sparse_complex_and_bad_arguments():
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = AdaBelief([param], lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = (param**2).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == 3.0
    assert torch.all(param < 1)

    embedding = torch.nn.Embedding(4, 2, sparse=True)
    sparse = AdaBelief(embedding.parameters())
    embedding(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        sparse.step()

    z = torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))
    z.grad = torch.ones_like(z)
    with pytest.raises(RuntimeError, match="complex"):
        AdaBelief([z]).step()

    for kwargs, match in [
        (dict(lr=-1.0), "lr"),
        (dict(betas=(1.0, 0.9)), r"betas\[0\]"),
        (dict(betas=(0.9,)), "betas"),
        (dict(eps=-1e-8), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
    ]:
        with pytest.raises((TypeError, ValueError), match=match):
            AdaBelief([param], **kwargs)
