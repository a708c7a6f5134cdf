"""DDP: every rank records the same history, and it is the single-process one."""

import numpy as np
import torch

import scenarios
from autodrop.velocity import angle_degrees


def single_process_run(as_ddp_sums: bool, build=scenarios.autodrop):
    """The DDP run in one process on the same global batches.

    With ``as_ddp_sums`` each global batch's gradient is formed as DDP forms it
    (each half-batch gradient scaled by 1/2, then summed), which makes the run
    bit-identical; without, it is the plain gradient of the global-batch loss
    (the same mean, other rounding).
    """
    x, y = scenarios.ddp_data()
    model = scenarios.ddp_model()
    optimizer = scenarios.sgd(model.parameters())
    scheduler = build(optimizer)
    params = list(model.parameters())
    for epoch in range(scenarios.DDP_EPOCHS):
        for batch in scenarios.global_batches(epoch, len(x)):
            if as_ddp_sums:
                grads = []
                for rank in range(scenarios.WORLD_SIZE):
                    rows = scenarios.rank_rows(batch, rank)
                    loss = torch.nn.functional.mse_loss(model(x[rows]), y[rows])
                    grads.append(torch.autograd.grad(loss, params))
                for p, *per_rank in zip(params, *grads):
                    p.grad = sum(g * (1.0 / scenarios.WORLD_SIZE) for g in per_rank)
            else:
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(model(x[batch]), y[batch]).backward()
            optimizer.step()
        scheduler.step()
    return scheduler.history, [p.detach() for p in params]


def test_ranks_record_identical_histories_equal_to_single_process(ranks):
    history, params = single_process_run(as_ddp_sums=True)
    assert sum(r["event"] == "drop" for r in history) >= 1, "the run must drop to exercise the decision"
    for result in ranks:
        assert result["ddp"]["history"] == history
        for a, b in zip(result["ddp"]["params"], params, strict=True):
            assert torch.equal(a, b)


def test_the_default_detector_decides_identically_on_every_rank_and_as_one_process(ranks):
    history, params = single_process_run(as_ddp_sums=True, build=scenarios.autodrop_trend)
    assert sum(r["event"] == "drop" for r in history) >= 1, "the run must drop to exercise the decision"
    assert "slope" in history[-1] and "passes" in history[-1]
    for result in ranks:
        assert result["ddp_trend"]["history"] == history
        for a, b in zip(result["ddp_trend"]["params"], params, strict=True):
            assert torch.equal(a, b)


def test_history_matches_the_global_batch_loss_run(ranks):
    history, _ = single_process_run(as_ddp_sums=False)
    recorded = ranks[0]["ddp"]["history"]
    assert [r["event"] for r in recorded] == [r["event"] for r in history]
    assert [r["lrs"] for r in recorded] == [r["lrs"] for r in history]
    for a, b in zip(recorded[1:], history[1:]):
        assert abs(a["omega"] - b["omega"]) <= 1e-3


def test_decision_is_rank_zeros_even_when_ranks_disagree(ranks):
    steps = [s.double().numpy() for s in scenarios.probe_steps(0)]
    expected = [None] + [
        angle_degrees(float(u @ v), float(u @ u), float(v @ v), eps=1e-8) for u, v in zip(steps[1:], steps)
    ]
    for result in ranks:
        np.testing.assert_allclose(
            np.array(result["ddp"]["probe_omegas"][1:], dtype=float), np.array(expected[1:], dtype=float), atol=1e-4
        )
    assert ranks[0]["ddp"]["probe_omegas"] == ranks[1]["ddp"]["probe_omegas"]
