import numpy as np
import pytest
import torch
from trajectories import angle64, flat64

import autodrop.trajectory as trajectory_module
from autodrop.trajectory import CPU_REDUCTION_CHUNK, ParameterTrajectory


def advance(trajectory):
    """Measure the step and commit it (as AngularVelocity.update does); its statistics."""
    measurement = trajectory.measure()
    trajectory.commit(measurement)
    return measurement.statistics


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
        results.append(advance(trajectory))

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


def test_write_params_and_snapshot_round_trip():
    params = make_params()
    trajectory = ParameterTrajectory(params)
    before = flat64(params)
    perturb(params, 1.0, 1)
    trajectory.write_params(trajectory.snapshots())
    np.testing.assert_array_equal(flat64(params), before)


def test_snapshot_device_cpu_holds_buffers_there():
    trajectory = ParameterTrajectory(make_params(), snapshot_device="cpu")
    assert all(b.snapshot.device.type == "cpu" and b.previous.device.type == "cpu" for b in trajectory.buckets)


@pytest.mark.parametrize("bad, message", [([], "empty"), (None, "more than once")])
def test_rejects_empty_or_repeated_params(bad, message):
    if bad is None:
        p = torch.zeros(3)
        bad = [p, p]
    with pytest.raises(ValueError, match=message):
        ParameterTrajectory(bad)


@pytest.mark.parametrize(
    "extra",
    [(), ((2 * CPU_REDUCTION_CHUNK,),), ((CPU_REDUCTION_CHUNK + 1, 3),)],
    ids=["one chunk", "chunks", "chunks+tail"],
)
def test_measure_matches_float64_on_the_stored_steps_and_writes_nothing(extra):
    generator = torch.Generator().manual_seed(1)
    params = make_params() + [torch.randn(shape, generator=generator) for shape in extra]
    trajectory = ParameterTrajectory(params)
    perturb(params, 0.1, 0)
    advance(trajectory)
    perturb(params, 0.1, 1)
    (bucket,) = trajectory.buckets
    buffers = [bucket.snapshot.clone(), bucket.previous.clone()]
    stats = trajectory.measure().statistics
    assert torch.equal(bucket.snapshot, buffers[0]) and torch.equal(bucket.previous, buffers[1])
    # Against the fp32 steps as they are stored, in float64: exact products, float64 sums.
    stored = (bucket.snapshot - torch.cat([p.reshape(-1) for p in params])).double().numpy()
    stored_previous = bucket.previous.double().numpy()
    np.testing.assert_allclose(stats.dot, stored @ stored_previous, rtol=1e-13)
    np.testing.assert_allclose(stats.norm_sq, stored @ stored, rtol=1e-13)
    np.testing.assert_allclose(stats.previous_norm_sq, stored_previous @ stored_previous, rtol=1e-13)


@pytest.mark.parametrize("advances", [2, 3])
def test_state_round_trip_continues_bit_identically(advances):
    # After an odd number of advances the snapshot sits in the other buffer; the loaded
    # trajectory must continue exactly as the saved one would.
    generator = torch.Generator().manual_seed(0)
    params = [torch.randn(1001, generator=generator), torch.randn(37, 3, generator=generator)]
    trajectory = ParameterTrajectory(params)
    for seed in range(advances):
        perturb(params, 0.1, seed)
        advance(trajectory)
    resumed = ParameterTrajectory(params)
    resumed.load_state_dict(trajectory.state_dict())
    for seed in range(advances, advances + 3):
        perturb(params, 0.1, seed)
        assert advance(resumed) == advance(trajectory)


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
    advance(trajectory)
    x1 = param.double()
    param.sub_(first.float() * 1e-3)
    stats = advance(trajectory)
    s1, s2 = x1 - x0, param.double() - x1
    np.testing.assert_allclose(stats.dot, float(s2 @ s1), rtol=1e-6)
    np.testing.assert_allclose(stats.norm_sq, float(s2 @ s2), rtol=1e-6)
    np.testing.assert_allclose(stats.previous_norm_sq, float(s1 @ s1), rtol=1e-6)


def bits(tensors):
    """The exact bit patterns of float tensors (equal bits, not just equal values)."""
    return [t.detach().clone().view(torch.uint8) for t in tensors]


def buffer_bits(trajectory):
    return bits([b.snapshot for b in trajectory.buckets] + [b.previous for b in trajectory.buckets])


def two_steps(dtypes):
    """Parameters, their trajectory after two random steps, and the three snapshots in float64."""
    params = make_params(dtypes)
    trajectory = ParameterTrajectory(params)
    snapshots = [flat64(params)]
    for seed in range(2):
        perturb(params, 0.1, seed)
        snapshots.append(flat64(params))
        advance(trajectory)
    return params, trajectory, snapshots


def assert_same_bits(a, b):
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtypes", [(torch.float32,), (torch.float32, torch.bfloat16, torch.float64)])
def test_nonfinite_step_changes_no_buffer_bit_and_next_step_resumes_from_them(bad, dtypes):
    params, trajectory, snapshots = two_steps(dtypes)
    before, previous_norm_sq = buffer_bits(trajectory), trajectory.previous_norm_sq

    good = [p.clone() for p in params]
    perturb(params, 0.1, 7)
    with torch.no_grad():
        params[2].view(-1)[5] = bad
    stats = advance(trajectory)
    assert stats.fault == "nonfinite"
    assert_same_bits(buffer_bits(trajectory), before)
    assert trajectory.previous_norm_sq == previous_norm_sq

    # The next finite interval is measured from x_{i-1} against d_{i-1}, as if the fault never happened.
    with torch.no_grad():
        for p, g in zip(params, good):
            p.copy_(g)
    perturb(params, 0.1, 8)
    stats = advance(trajectory)
    step, last = flat64(params) - snapshots[-1], snapshots[-1] - snapshots[-2]
    assert stats.fault is None
    np.testing.assert_allclose(stats.dot, step @ last, rtol=1e-5)
    np.testing.assert_allclose(stats.norm_sq, step @ step, rtol=1e-5)
    np.testing.assert_allclose(stats.previous_norm_sq, last @ last, rtol=1e-5)


def test_zero_step_is_not_taken_and_the_last_nonzero_step_stays_the_previous_one():
    params, trajectory, snapshots = two_steps((torch.float32,))
    before = buffer_bits(trajectory)
    stats = advance(trajectory)  # nothing moved
    assert stats.fault == "zero_step" and stats.norm_sq == 0.0
    assert_same_bits(buffer_bits(trajectory), before)
    perturb(params, 0.1, 3)
    stats = advance(trajectory)
    step, last = flat64(params) - snapshots[-1], snapshots[-1] - snapshots[-2]
    np.testing.assert_allclose(stats.dot, step @ last, rtol=1e-5)


def test_reduction_chunks_cover_every_element_once():
    params = [torch.zeros(5), torch.zeros(0), torch.zeros(3, 4), torch.zeros(1)]
    trajectory = ParameterTrajectory(params)
    plan = trajectory.buckets[0]._chunk_plan(4)
    # 5 elements: a chunk of 4 and one of 1; the empty tensor: nothing; 12: three chunks of 4; 1: a run.
    assert [(start, stop) for start, stop, _ in plan] == [(0, 4), (4, 5), (5, 9), (9, 13), (13, 17), (17, 18)]
    assert plan[1][2] == [(0, 4, 5)] and plan[-1][2] == [(3, 0, 1)]
    assert sum(last - first for _, _, covered in plan for _, first, last in covered) == 18
    # Small tensors share a chunk; a large one never shares.
    params = [torch.zeros(2), torch.zeros(1), torch.zeros(9), torch.zeros(3), torch.zeros(2)]
    plan = ParameterTrajectory(params).buckets[0]._chunk_plan(4)
    assert [covered for _, _, covered in plan] == [
        [(0, 0, 2), (1, 0, 1)],
        [(2, 0, 4)],
        [(2, 4, 8)],
        [(2, 8, 9)],
        [(3, 0, 3)],
        [(4, 0, 2)],
    ]
    assert [(start, stop) for start, stop, _ in plan] == [(0, 3), (3, 7), (7, 11), (11, 12), (12, 15), (15, 17)]


def test_chunked_reduction_matches_one_chunk_and_holds_no_work_tensor(monkeypatch):
    results = []
    for chunk in (CPU_REDUCTION_CHUNK, 7):
        monkeypatch.setattr(trajectory_module, "CPU_REDUCTION_CHUNK", chunk)
        params = make_params()
        trajectory = ParameterTrajectory(params)
        stats = []
        for seed in range(3):
            perturb(params, 0.1, seed)
            stats.append(advance(trajectory))
            bucket = trajectory.buckets[0]
            held = [value for value in vars(bucket).values() if isinstance(value, torch.Tensor)]
            numel = sum(p.numel() for p in trajectory.params)
            assert sum(t.numel() for t in held) == 2 * numel  # snapshot and step only
        results.append(stats)
        assert trajectory.buckets[0].chunk_size == chunk
    for a, b in zip(*results):
        assert a.norm_sq == pytest.approx(b.norm_sq, rel=1e-12)
        assert (a.dot is None and b.dot is None) or a.dot == pytest.approx(b.dot, rel=1e-12)


@pytest.mark.parametrize("degrees", [0.0, 1e-3, 0.01, 0.1, 1.0, 45.0, 90.0, 135.0, 179.0, 179.99, 179.999, 180.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_omega_is_within_a_thousandth_of_a_degree_of_float64_at_any_angle(degrees, dtype):
    # Steps of 3e5 elements (three chunks), the second turned by `degrees` from the first in a
    # random plane; the reference is the angle of the steps as the parameters realised them.
    generator = torch.Generator().manual_seed(0)
    n = 300_000
    u = torch.randn(n, generator=generator, dtype=torch.float64)
    v = torch.randn(n, generator=generator, dtype=torch.float64)
    u, v = u / u.norm(), v - (v @ u) / (u @ u) * u
    v = v / v.norm()
    theta = np.radians(degrees)
    second = np.cos(theta) * u + np.sin(theta) * v
    param = torch.zeros(n, dtype=dtype)
    trajectory = ParameterTrajectory([param])
    x = [flat64([param])]
    for step in (u, second):
        with torch.no_grad():
            param.add_(step.to(dtype))
        x.append(flat64([param]))
        stats = advance(trajectory)
    cosine = stats.dot / (np.sqrt(stats.norm_sq) * np.sqrt(stats.previous_norm_sq))
    omega = np.degrees(np.arccos(np.clip(cosine, -1, 1)))
    assert abs(omega - angle64(x[2] - x[1], x[1] - x[0], eps=0)) < 1e-3


@pytest.mark.parametrize("scale", [1e-40, 1e-30, 1e20, 1e30])
def test_tiny_and_huge_finite_steps_are_measured_not_reported_as_faults(scale):
    params = [torch.zeros(1000)]
    trajectory = ParameterTrajectory(params)
    generator = torch.Generator().manual_seed(0)
    x = [flat64(params)]
    for _ in range(2):
        with torch.no_grad():
            params[0].add_(scale * torch.randn(1000, generator=generator))
        x.append(flat64(params))
        stats = advance(trajectory)
    s1, s2 = x[1] - x[0], x[2] - x[1]
    assert stats.fault is None
    np.testing.assert_allclose([stats.dot, stats.norm_sq], [s2 @ s1, s2 @ s2], rtol=1e-6)  # fp32 steps


def test_previous_step_is_bit_for_bit_the_measured_one():
    params = make_params((torch.float32, torch.bfloat16))
    trajectory = ParameterTrajectory(params)
    snapshots = [[b.snapshot.clone() for b in trajectory.buckets]]
    for seed in range(3):
        perturb(params, 0.1, seed)
        advance(trajectory)
        snapshots.append([b.snapshot.clone() for b in trajectory.buckets])
    measured = [torch.sub(before, after) for before, after in zip(snapshots[-2], snapshots[-1])]
    assert_same_bits(bits([b.previous for b in trajectory.buckets]), bits(measured))
    assert_same_bits(bits(trajectory.state_dict()["steps"]), bits(measured))
    trajectory.snapshot_current()
    assert_same_bits(bits([b.previous for b in trajectory.buckets]), bits(measured))


def test_a_parameter_whose_shape_changed_is_a_clear_error_and_changes_nothing():
    params = [torch.nn.Parameter(torch.zeros(200_000)), torch.nn.Parameter(torch.zeros(3, 4))]
    trajectory = ParameterTrajectory(params)
    advance(trajectory)
    before = buffer_bits(trajectory)
    params[0].data = torch.zeros(200_001)
    with pytest.raises(ValueError, match=r"a parameter of shape \(200000,\) torch.float32 is now \(200001,\)"):
        trajectory.measure()
    params[0].data = torch.zeros(200_000)
    params[1].data = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="its .data was replaced"):
        advance(trajectory)
    assert_same_bits(buffer_bits(trajectory), before)


def test_a_state_of_another_model_with_the_same_size_is_refused():
    trajectory = ParameterTrajectory([torch.zeros(3, 4), torch.zeros(6)])
    other = ParameterTrajectory([torch.zeros(6), torch.zeros(3, 4)])
    with pytest.raises(ValueError, match=r"\['shapes'\]\[0\] is \[\[6\], \[3, 4\]\].*another model"):
        trajectory.load_state_dict(other.state_dict())


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (torch.zeros(3), TypeError, "a single tensor"),
        (3.0, TypeError, "an iterable of tensors, got float"),
        ([1.0, 2.0], TypeError, r"params\[0\] must be a tensor, got float"),
        ([{"params": [torch.zeros(2)]}], TypeError, r"params\[0\] must be a tensor, got dict"),
        ([torch.zeros(2, dtype=torch.complex64)], TypeError, "complex64; AutoDrop measures float16"),
        ([torch.zeros(2, dtype=torch.int64)], TypeError, "int64"),
        ([torch.zeros(2).to_sparse()], TypeError, "layout torch.sparse_coo"),
        ([torch.zeros(2, device="meta")], ValueError, "meta device"),
    ],
)
def test_what_cannot_be_measured_is_refused_at_construction(bad, error, message):
    with pytest.raises(error, match=message):
        ParameterTrajectory(bad)


def test_non_contiguous_parameters_and_replaced_data_are_measured_as_they_are_now():
    # A channels_last conv weight and a transposed view are read in logical order; a
    # parameter whose .data is replaced is read from its new storage (the cached views of
    # the old one are not reused).
    generator = torch.Generator().manual_seed(5)
    conv = torch.randn(4, 3, 3, 3, generator=generator).to(memory_format=torch.channels_last)
    transposed = torch.randn(6, 5, generator=generator).t()
    plain = torch.nn.Parameter(torch.randn(7, generator=generator))
    params = [conv, transposed, plain]
    assert not conv.is_contiguous() and not transposed.is_contiguous()
    trajectory = ParameterTrajectory(params)
    snapshots = [flat64(params)]
    results = []
    for seed in range(4):
        perturb(params, 0.1, seed)
        if seed == 2:
            plain.data = plain.data + 0.05
        snapshots.append(flat64(params))
        results.append(advance(trajectory))
    steps = np.diff(np.stack(snapshots), axis=0)
    for i in range(1, 4):
        np.testing.assert_allclose(results[i].dot, steps[i] @ steps[i - 1], rtol=1e-5)
        np.testing.assert_allclose(results[i].norm_sq, steps[i] @ steps[i], rtol=1e-5)
