import numpy as np
import pytest
import torch

import autodrop.geometry as geometry
from autodrop.geometry import CPU_REDUCTION_CHUNK, ParameterTrajectory

from trajectories import flat64

pytestmark = pytest.mark.usefixtures("stepping")


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
    assert all(b.snapshot.device.type == "cpu" and b.previous.device.type == "cpu" for b in trajectory.buckets)


@pytest.mark.parametrize("bad, message", [([], "empty"), (None, "more than once")])
def test_rejects_empty_or_repeated_params(bad, message):
    if bad is None:
        p = torch.zeros(3)
        bad = [p, p]
    with pytest.raises(ValueError, match=message):
        ParameterTrajectory(bad)


@pytest.mark.parametrize("precise", [False, True])
@pytest.mark.parametrize(
    "extra",
    [(), ((2 * CPU_REDUCTION_CHUNK,),), ((CPU_REDUCTION_CHUNK + 1, 3),)],
    ids=["one chunk", "chunks", "chunks+tail"],
)
def test_both_reductions_match_float64_and_write_nothing(precise, extra):
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
    buffers = [bucket.snapshot.clone(), bucket.previous.clone()]
    # Per chunk partials; summed here in float64, as the trajectory sums them.
    partials = bucket.reduce_step(bucket.pieces(params), precise).double().numpy()
    reductions = partials.reshape(-1, 3 if precise else 2).sum(0)
    assert torch.equal(bucket.snapshot, buffers[0]) and torch.equal(bucket.previous, buffers[1])
    if precise:
        # Against the fp32 steps as they are stored, in float64: exact products, float64 sums.
        stored = (bucket.snapshot - torch.cat([p.reshape(-1) for p in params])).double().numpy()
        stored_previous = bucket.previous_step().double().numpy()
        expected = [stored @ stored_previous, stored @ stored, stored_previous @ stored_previous]
        np.testing.assert_allclose(reductions, expected, rtol=1e-13)
        return
    dot, norm_sq = reductions
    step = flat64(params) - before
    # The dot's error is what it adds to the cosine: relative to |s_i| |s_{i-1}|.
    scale = np.linalg.norm(step) * np.linalg.norm(previous_step)
    np.testing.assert_allclose(dot / scale, step @ previous_step / scale, atol=1e-6)
    np.testing.assert_allclose(norm_sq, step @ step, rtol=1e-6)


@pytest.mark.parametrize("advances", [2, 3])
def test_state_round_trip_continues_bit_identically(advances):
    # After an odd number of advances the snapshot sits in the other buffer; the loaded
    # trajectory must continue exactly as the saved one would.
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
        trajectory.advance()
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
    stats = trajectory.advance()
    assert stats.fault == "nonfinite"
    assert_same_bits(buffer_bits(trajectory), before)
    assert trajectory.previous_norm_sq == previous_norm_sq

    # The next finite interval is measured from x_{i-1} against d_{i-1}, as if the fault never happened.
    with torch.no_grad():
        for p, g in zip(params, good):
            p.copy_(g)
    perturb(params, 0.1, 8)
    stats = trajectory.advance()
    step, last = flat64(params) - snapshots[-1], snapshots[-1] - snapshots[-2]
    assert stats.fault is None
    np.testing.assert_allclose(stats.dot, step @ last, rtol=1e-5)
    np.testing.assert_allclose(stats.norm_sq, step @ step, rtol=1e-5)
    np.testing.assert_allclose(stats.previous_norm_sq, last @ last, rtol=1e-5)


def test_zero_step_is_not_taken_and_the_last_nonzero_step_stays_the_previous_one():
    params, trajectory, snapshots = two_steps((torch.float32,))
    before = buffer_bits(trajectory)
    stats = trajectory.advance()  # nothing moved
    assert stats.fault == "zero_step" and stats.norm_sq == 0.0
    assert_same_bits(buffer_bits(trajectory), before)
    perturb(params, 0.1, 3)
    stats = trajectory.advance()
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
        [(0, 0, 2), (1, 0, 1)], [(2, 0, 4)], [(2, 4, 8)], [(2, 8, 9)], [(3, 0, 3)], [(4, 0, 2)],
    ]
    assert [(start, stop) for start, stop, _ in plan] == [(0, 3), (3, 7), (7, 11), (11, 12), (12, 15), (15, 17)]


def test_chunked_reduction_matches_one_chunk_and_holds_no_work_tensor(monkeypatch):
    results = []
    for chunk in (CPU_REDUCTION_CHUNK, 7):
        monkeypatch.setattr(geometry, "CPU_REDUCTION_CHUNK", chunk)
        params = make_params()
        trajectory = ParameterTrajectory(params)
        stats = []
        for seed in range(3):
            perturb(params, 0.1, seed)
            bucket = trajectory.buckets[0]
            precise = bucket.reduce_step(bucket.pieces(params), precise=True).view(-1, 3).sum(0, dtype=torch.float64)
            stats.append(trajectory.advance())
            held = [value for value in vars(bucket).values() if isinstance(value, torch.Tensor)]
            assert sum(t.numel() for t in held) == 2 * trajectory.numel  # snapshot and step only
        results.append((stats, precise))
        assert trajectory.buckets[0].chunk_size == chunk
    (fast_a, precise_a), (fast_b, precise_b) = results
    for a, b in zip(fast_a, fast_b):
        assert a.norm_sq == pytest.approx(b.norm_sq, rel=1e-6)
        assert (a.dot is None and b.dot is None) or a.dot == pytest.approx(b.dot, rel=1e-6)
    np.testing.assert_allclose(precise_a.numpy(), precise_b.numpy(), rtol=1e-12)


def test_nearly_parallel_steps_take_the_float64_pass(monkeypatch):
    passes = []
    reduce_step = geometry._Bucket.reduce_step

    def recording(bucket, current, precise=False):
        passes.append(precise)
        return reduce_step(bucket, current, precise)

    monkeypatch.setattr(geometry._Bucket, "reduce_step", recording)
    generator = torch.Generator().manual_seed(0)
    param = torch.zeros(1000)
    trajectory = ParameterTrajectory([param])
    first = torch.randn(1000, generator=generator)
    steps = [first, first + 1e-4 * torch.randn(1000, generator=generator), torch.randn(1000, generator=generator)]
    for step in steps:  # the second step is nearly parallel to the first, the third is not
        with torch.no_grad():
            param.add_(step)
        trajectory.advance()
    assert passes == [False, False, True, False]


def test_previous_step_is_bit_for_bit_the_measured_one_in_either_form():
    # In place, after a step the older buffer holds x_{i-2}; d_{i-1} = x_{i-2} - x_{i-1} is
    # formed from the same two fp32 values as when it was measured, so it has the same bits,
    # also once rebase() stores it in place, and in the state dict. Out of place the buffer
    # holds the measured d_{i-1} itself.
    params = make_params((torch.float32, torch.bfloat16))
    trajectory = ParameterTrajectory(params)
    snapshots = [[b.snapshot.clone() for b in trajectory.buckets]]
    for seed in range(3):
        perturb(params, 0.1, seed)
        trajectory.advance()
        snapshots.append([b.snapshot.clone() for b in trajectory.buckets])
    measured = [torch.sub(before, after) for before, after in zip(snapshots[-2], snapshots[-1])]
    assert all(b.previous_is_snapshot != b.out_of_place for b in trajectory.buckets)
    assert_same_bits(bits([b.previous_step() for b in trajectory.buckets]), bits(measured))
    assert_same_bits(bits(trajectory.state_dict()["steps"]), bits(measured))
    trajectory.rebase()
    assert not any(b.previous_is_snapshot for b in trajectory.buckets)
    assert_same_bits(bits([b.previous for b in trajectory.buckets]), bits(measured))


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
        results.append(trajectory.advance())
    steps = np.diff(np.stack(snapshots), axis=0)
    for i in range(1, 4):
        np.testing.assert_allclose(results[i].dot, steps[i] @ steps[i - 1], rtol=1e-5)
        np.testing.assert_allclose(results[i].norm_sq, steps[i] @ steps[i], rtol=1e-5)
