import numpy as np
import pytest
import torch

from autodrop.geometry import CHUNKED_FROM, ParameterTrajectory, _step_reductions

from trajectories import flat64


def make_params(dtypes=(torch.float32,)):
    generator = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 2, 4), (1,)]
    return [
        torch.randn(shape, generator=generator, dtype=torch.float64).to(dtypes[i % len(dtypes)])
        for i, shape in enumerate(shapes)
    ]


def perturb(params, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype))


@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.float64,), (torch.float32, torch.float64, torch.bfloat16)])
def test_reductions_match_float64_reference(dtypes):
    params = make_params(dtypes)
    trajectory = ParameterTrajectory(params)
    snapshots = [flat64(params)]
    results = []
    for seed in range(4):
        perturb(params, 0.1 * (seed + 1), seed)
        snapshots.append(flat64(params))
        results.append(trajectory.advance())

    steps = np.diff(np.stack(snapshots), axis=0)
    assert results[0].dot is None and results[0].previous_norm_sq is None
    for i in range(1, 4):
        np.testing.assert_allclose(results[i].dot, steps[i] @ steps[i - 1], rtol=1e-5)
        np.testing.assert_allclose(results[i].norm_sq, steps[i] @ steps[i], rtol=1e-5)
        np.testing.assert_allclose(results[i].previous_norm_sq, steps[i - 1] @ steps[i - 1], rtol=1e-5)


def test_buffers_are_two_parameter_copies_in_at_least_fp32():
    params = make_params((torch.float32, torch.bfloat16))
    trajectory = ParameterTrajectory(params)
    fp32_bytes = sum(p.numel() * 4 for p in params)
    assert trajectory.buffer_bytes() == 2 * fp32_bytes
    assert len(trajectory.buckets) == 2


def test_write_params_and_rebase_round_trip():
    params = make_params()
    trajectory = ParameterTrajectory(params)
    before = flat64(params)
    perturb(params, 1.0, 1)
    trajectory.write_params(trajectory.snapshots())
    np.testing.assert_array_equal(flat64(params), before)


def test_snapshot_device_cpu_holds_buffers_there():
    trajectory = ParameterTrajectory(make_params(), snapshot_device="cpu")
    assert all(b.snapshot.device.type == "cpu" and b.step.device.type == "cpu" for b in trajectory.buckets)


@pytest.mark.parametrize("bad, message", [([], "empty"), (None, "more than once")])
def test_rejects_empty_or_repeated_params(bad, message):
    if bad is None:
        p = torch.zeros(3)
        bad = [p, p]
    with pytest.raises(ValueError, match=message):
        ParameterTrajectory(bad)


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("extra", [(), ((CHUNKED_FROM,),), ((CHUNKED_FROM + 1, 3),)], ids=["small", "chunks", "chunks+tail"])
def test_both_reduction_kernels_match_float64(chunked, extra):
    generator = torch.Generator().manual_seed(1)
    params = make_params() + [torch.randn(shape, generator=generator) for shape in extra]
    trajectory = ParameterTrajectory(params)
    before = flat64(params)
    perturb(params, 0.1, 0)
    trajectory.advance()
    previous_step = flat64(params) - before
    before = flat64(params)
    perturb(params, 0.1, 1)
    (bucket,) = trajectory.buckets
    torch._foreach_sub_(bucket.snapshot_views, params)  # the snapshot row now holds d_i = -s_i
    step = flat64(params) - before
    dot, norm_sq = _step_reductions(bucket, chunked).double().numpy()
    # The dot's error is what it adds to the cosine: relative to |s_i| |s_{i-1}|.
    scale = np.linalg.norm(step) * np.linalg.norm(previous_step)
    np.testing.assert_allclose(dot / scale, step @ previous_step / scale, atol=1e-6)
    np.testing.assert_allclose(norm_sq, step @ step, rtol=1e-6)


@pytest.mark.parametrize("advances", [2, 3])
def test_state_round_trip_continues_bit_identically(advances):
    # After an odd number of advances the snapshot sits in the other row of the pair;
    # the loaded trajectory must use the same row (the reductions' rounding depends on it).
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(1001, generator=generator), torch.randn(37, 3, generator=generator)]
    trajectory = ParameterTrajectory(params)
    for seed in range(advances):
        perturb(params, 0.1, seed)
        trajectory.advance()
    resumed = ParameterTrajectory(params)
    resumed.load_state_dict(trajectory.state_dict())
    for seed in range(advances, advances + 3):
        perturb(params, 0.1, seed)
        assert resumed.advance() == trajectory.advance()


def test_reductions_stay_accurate_over_millions_of_elements():
    # One fp32 BLAS dot over these 3e6 terms is off by 3e-4 relative (measured); the chunked
    # reduction (fp32 chunks summed in float64) stays within a few fp32 roundings.
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(3_000_017, generator=generator, dtype=torch.float64)
    second = first + 0.5 * torch.randn(first.shape, generator=generator, dtype=torch.float64)
    param = first.float() * 1e-3
    trajectory = ParameterTrajectory([param])
    x0 = param.double()
    param.sub_(second.float() * 1e-3)
    trajectory.advance()
    x1 = param.double()
    param.sub_(first.float() * 1e-3)
    stats = trajectory.advance()
    s1, s2 = x1 - x0, param.double() - x1
    np.testing.assert_allclose(stats.dot, float(s2 @ s1), rtol=1e-6)
    np.testing.assert_allclose(stats.norm_sq, float(s2 @ s2), rtol=1e-6)
    np.testing.assert_allclose(stats.previous_norm_sq, float(s1 @ s1), rtol=1e-6)
