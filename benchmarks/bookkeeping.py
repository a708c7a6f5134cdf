"""AutoDrop's bookkeeping cost against the memory-bandwidth limit and the naive approach.

    python benchmarks/bookkeeping.py [--device cpu|cuda] [--sizes 1e5 1e6 1e7 1e8]

Table 1, per model size P (a ResNet-like plus transformer-like list of tensors, and a
deep model of 2,000 small tensors at 1e6), one row outside and one inside the delay
window:

- ``step``: median time of one ``AutoDrop.step()``;
- ``copy``: median time of ``dst.copy_(src)`` on flat buffers that moves exactly the
  bytes the step must touch, B (B/2 read, B/2 written): the bandwidth limit;
- ``gather``: one ``torch.cat`` of the parameters into a preallocated flat buffer: the
  read of x_i as the parameters' layout allows it (for thousands of small tensors it
  costs several times a contiguous read of the same bytes), done twice by a step in
  place;
- ``naive``: flatten the model with ``torch.cat`` into fresh vectors every interval,
  subtract, and take the dot product and the norms (outside row only);
- ``held``: bytes of the buffers AutoDrop holds / (P e_b), e_b as below (measured with
  ``torch.cuda.memory_allocated`` on CUDA, ``AutoDrop.buffer_bytes()`` on CPU).

The bytes a step must touch, with e_p the parameters' element size and e_b = max(4, e_p)
the buffers' (the arithmetic is at least fp32):

- outside the window: a step that may not write anything before it knows the step is
  finite and nonzero (so that a NaN/Inf never corrupts the buffers), holding two
  buffers, must first read x_i, x_{i-1} and the previous step (P (e_p + 2 e_b)), then
  read x_i again and write it as the new snapshot (P (e_p + e_b)):
  B = P (2 e_p + 3 e_b), 20 P bytes in fp32. AutoDrop's one chunked path moves 28 P in
  fp32: it stores d_{i-1} itself, so its write pass reads x_{i-1} and x_i and writes both
  buffers;
- inside: also read and write the running sum z (2 P e_b): B = P (2 e_p + 5 e_b).

Targets (checked and printed): step <= the naive step for P >= 1e7; held <= 2 x the
parameters' bytes at e_b (outside) and <= 3 x (inside); with ``--device cuda``
``snapshot_device="cpu"`` adds zero accelerator bytes (``torch.cuda.memory_allocated``
and its peak, before/after).

Table 2: the per-epoch overhead, ``step()`` time / training-epoch time, for the
benchmark suite's models (``autodrop.apps.bench.tasks``: digits CNN, MNIST-1D CNN, MNIST MLP
256-256, CIFAR ResNet-18) at their tasks' training-set sizes and batch sizes, training
on random tensors of the data's shapes (SGD with momentum); the ResNet-18 epoch is
extrapolated from a few timed batches. Target < 0.5 %. The benchmark report
(``autodrop bench``) shows the same ratio measured in the real runs.

Medians over ``--repeats`` interleaved repeats after ``--warmup`` rounds; compare
the ratios, not the absolute times (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from autodrop import AutoDrop
from autodrop.apps.bench.tasks import cnn1d, cnn2d, mlp, resnet18_cifar

CLOCK = {"cpu": "process CPU time", "cuda": "wall time between synchronizations"}
STEP_OVER_NAIVE_TARGET = 1.0
HELD_TARGET = {"outside": 2.0, "inside": 3.0}
EPOCH_OVERHEAD_TARGET = 0.005
DEEP_TENSORS = 2000


# ---------------------------------------------------------------- model shapes


def resnet_like(width: int) -> list[tuple[int, ...]]:
    """Shapes of a CIFAR-style ResNet-18: stem, 4 stages x 2 basic blocks, head."""
    shapes: list[tuple[int, ...]] = [(width, 3, 3, 3), (width,), (width,)]
    channels = width
    for stage in range(4):
        out = width * 2**stage
        for block in range(2):
            first = block == 0 and stage > 0
            shapes += [(out, channels, 3, 3), (out,), (out,), (out, out, 3, 3), (out,), (out,)]
            if first:
                shapes += [(out, channels, 1, 1), (out,), (out,)]
            channels = out
    return shapes + [(10, channels), (10,)]


def transformer_like(dim: int, layers: int, vocab: int = 256) -> list[tuple[int, ...]]:
    """Shapes of a pre-norm transformer: embedding, blocks of attention + MLP, final norm."""
    shapes: list[tuple[int, ...]] = [(vocab, dim)]
    for _ in range(layers):
        shapes += [(dim,), (dim,), (3 * dim, dim), (3 * dim,), (dim, dim), (dim,)]
        shapes += [(dim,), (dim,), (4 * dim, dim), (4 * dim,), (dim, 4 * dim), (dim,)]
    return shapes + [(dim,), (dim,)]


def numel(shapes: Sequence[tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes)


def mixed_shapes(target: int) -> list[tuple[int, ...]]:
    """About ``target`` parameters, half in a ResNet-like and half in a transformer-like list."""
    width = max(2, round(math.sqrt(target / 2 / numel(resnet_like(1)))))
    layers = max(2, 2 * round(math.log10(target)) - 8)  # 2, 4, 6, 8 blocks for 1e5 ... 1e8
    dim = 8
    while numel(transformer_like(dim + 8, layers)) <= target / 2:
        dim += 8
    return resnet_like(width) + transformer_like(dim, layers)


def deep_shapes(target: int, tensors: int) -> list[tuple[int, ...]]:
    """A deep narrow MLP: ``tensors`` / 2 linear layers (weight and bias) of equal width."""
    width = max(1, round((-1 + math.sqrt(1 + 4 * target / (tensors // 2))) / 2))
    return [(width, width), (width,)] * (tensors // 2)


# ---------------------------------------------------------------- timing helpers


def stopwatch(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """Seconds one call takes: wall time between ``torch.cuda.synchronize()`` calls on CUDA;
    on CPU the CPU time of this process (all its threads), which other processes
    preempting it on a shared machine do not inflate."""
    if device.type == "cuda":

        def timed(fn: Callable[[], object]) -> float:
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize(device)
            return time.perf_counter() - start

    else:

        def timed(fn: Callable[[], object]) -> float:
            start = time.process_time()
            fn()
            return time.process_time() - start

    return timed


class Perturbation:
    """Moves the parameters a little, in varying directions, between measured intervals.

    The even and the odd elements of every tensor are scaled by fresh factors 1 + b
    and 1 + c each call: the step b x_even + c x_odd turns by a random angle in the
    plane they span, so successive steps are neither zero nor, mostly, nearly
    parallel (AutoDrop's float64 pass for |cos| > 0.99 runs in ~1 interval in 10, as
    the medians reflect), and nothing parameter-sized is stored.
    """

    def __init__(self, params: list[Tensor], seed: int = 0) -> None:
        flat = [p.detach().view(-1) for p in params]
        self.halves = [[f[0::2] for f in flat], [f[1::2] for f in flat if f.numel() > 1]]
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self) -> None:
        for half, factor in zip(self.halves, (1e-3 * torch.randn(2, generator=self.generator)).tolist()):
            torch._foreach_mul_(half, 1.0 + factor)


class NaiveFlatten:
    """The published research-code way: a fresh flat copy of the model every interval."""

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        self.previous = self.flatten()
        self.previous_step: Tensor | None = None

    def flatten(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def step(self) -> None:
        current = self.flatten()
        step = current - self.previous
        if self.previous_step is not None:
            torch.stack(
                [
                    torch.dot(step, self.previous_step),
                    torch.dot(step, step),
                    torch.dot(self.previous_step, self.previous_step),
                ]
            ).tolist()
        self.previous, self.previous_step = current, step


def make_params(shapes: Sequence[tuple[int, ...]], device: torch.device, dtype: torch.dtype) -> list[Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(s, generator=generator).mul_(0.1).to(device=device, dtype=dtype)) for s in shapes
    ]


def scheduler_for(params: list[Tensor], inside: bool, snapshot_device: str | None) -> AutoDrop:
    """An AutoDrop that stays outside the delay window, or one driven into it.

    Outside: a threshold no change of omega reaches. Inside: every change of omega is
    below 180 degrees, so the third step triggers, and the delay never ends.
    """
    optimizer = torch.optim.SGD(params, lr=0.1)
    if not inside:
        return AutoDrop(optimizer, detector="paper", threshold=1e-300, delay=1, snapshot_device=snapshot_device)
    scheduler = AutoDrop(
        optimizer, detector="paper", threshold=180.0, max_threshold=180.0, delay=10**9, snapshot_device=snapshot_device
    )
    perturb = Perturbation(params, seed=1)
    while not scheduler.pending:
        perturb()
        scheduler.step()
    return scheduler


def touched_bytes(num: int, param_size: int, inside: bool) -> int:
    """B = P (2 e_p + 3 e_b) outside the window, P (2 e_p + 5 e_b) inside; e_b = max(4, e_p)."""
    buffer_size = max(4, param_size)
    return num * (2 * param_size + (5 if inside else 3) * buffer_size)


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not found in /proc/meminfo")


# ---------------------------------------------------------------- table 1


@dataclass
class Row:
    name: str
    nominal: int
    num: int
    tensors: int
    window: str
    step: float
    copy: float
    naive: float | None
    gather: float | None
    over_copy: float
    over_naive: float | None
    held: float
    peak: float | None
    touched: int
    accelerator_extra: str


def measure_window(
    shapes: Sequence[tuple[int, ...]],
    name: str,
    nominal: int,
    inside: bool,
    args: argparse.Namespace,
) -> Row:
    """Interleaved repeats of: perturb, AutoDrop.step(), the reference copy, the naive step.

    Step and copy run back to back, in alternating order, so that each pair sees the
    same machine; the ratios are medians of the per-repeat ratios.
    """
    device, timed = args.device, stopwatch(args.device)
    cuda = device.type == "cuda"
    params = make_params(shapes, device, args.dtype)
    num = sum(p.numel() for p in params)
    touched = touched_bytes(num, params[0].element_size(), inside)

    if cuda:
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
    scheduler = scheduler_for(params, inside, None)
    held, peak = scheduler.buffer_bytes(), None
    if cuda:
        torch.cuda.synchronize(device)
        # The allocator rounds every block up to 512 bytes: the measured figure is the one shown.
        held = torch.cuda.memory_allocated(device) - before
        Perturbation(params, seed=3)()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        scheduler.step()
        torch.cuda.synchronize(device)
        peak = held + torch.cuda.max_memory_allocated(device) - start

    source = torch.empty(touched // 2 // 4, dtype=torch.float32, device=device).normal_()
    target = torch.empty_like(source)
    naive = None if inside else NaiveFlatten(params)
    flat = [p.detach().view(-1) for p in params]
    gathered = None if inside else torch.empty(num, dtype=args.dtype, device=device)
    perturb = Perturbation(params)
    steps, copies, naives, gathers = [], [], [], []
    for repeat in range(args.warmup + args.repeats):
        perturb()
        if repeat % 2:
            copy_time = timed(lambda: target.copy_(source))
            step_time = timed(scheduler.step)
        else:
            step_time = timed(scheduler.step)
            copy_time = timed(lambda: target.copy_(source))
        if naive is not None:
            perturb()
            naive_time = timed(naive.step)
            perturb()
            gather_time = timed(lambda: torch.cat(flat, out=gathered))
        if repeat >= args.warmup:
            steps.append(step_time)
            copies.append(copy_time)
            if naive is not None:
                naives.append(naive_time)
                gathers.append(gather_time)
    if scheduler.pending != inside or scheduler.num_drops != 0:
        raise RuntimeError(f"{name}: the scheduler left its scripted state (pending={scheduler.pending})")

    accelerator = "-"
    if cuda:
        del source, target, naive, gathered
        accelerator = cpu_snapshot_accelerator_bytes(params, inside)
    return Row(
        name=name,
        nominal=nominal,
        num=num,
        tensors=len(params),
        window="inside" if inside else "outside",
        step=statistics.median(steps),
        copy=statistics.median(copies),
        naive=statistics.median(naives) if naives else None,
        gather=statistics.median(gathers) if gathers else None,
        over_copy=statistics.median(s / c for s, c in zip(steps, copies)),
        over_naive=statistics.median(s / n for s, n in zip(steps, naives)) if naives else None,
        held=held / (num * max(4, params[0].element_size())),
        peak=peak / (num * max(4, params[0].element_size())) if peak is not None else None,
        touched=touched,
        accelerator_extra=accelerator,
    )


def cpu_snapshot_accelerator_bytes(params: list[Tensor], inside: bool) -> str:
    """Accelerator bytes added by an AutoDrop with ``snapshot_device="cpu"``: held and peak."""
    device = params[0].device
    perturb = Perturbation(params, seed=2)
    torch.cuda.synchronize(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    scheduler = scheduler_for(params, inside, "cpu")
    for _ in range(3):
        perturb()
        scheduler.step()
    torch.cuda.synchronize(device)
    held = torch.cuda.memory_allocated(device) - baseline
    peak = torch.cuda.max_memory_allocated(device) - baseline
    # Perturbation() allocates nothing on the accelerator; any growth is AutoDrop's.
    return f"{held}/{peak}"


def memory_needed(num: int, param_size: int) -> int:
    """Peak bytes of one measurement: parameters, scheduler, copy buffers and naive vectors."""
    buffer_size = max(4, param_size)
    outside = num * (param_size + 2 * buffer_size + 5 * param_size) + touched_bytes(num, param_size, False)
    inside = num * (param_size + 3 * buffer_size) + touched_bytes(num, param_size, True)
    return max(outside, inside)


def table_one(args: argparse.Namespace) -> list[Row]:
    models: list[tuple[str, int, list[tuple[int, ...]]]] = []
    for size in map(int, args.sizes):
        models.append((f"mixed {size:.0e}", size, mixed_shapes(size)))
        if args.deep and size == 10**6:
            models.append((f"deep {size:.0e}", size, deep_shapes(size, DEEP_TENSORS)))
    rows = []
    param_size = torch.empty((), dtype=args.dtype).element_size()
    for name, nominal, shapes in models:
        needed = memory_needed(numel(shapes), param_size)
        free = available_bytes(args.device)
        if needed > 0.6 * free:
            print(f"skipping {name}: needs {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available")
            continue
        for inside in (False, True):
            rows.append(measure_window(shapes, name, nominal, inside, args))
    return rows


def print_table_one(rows: list[Row], args: argparse.Namespace) -> bool:
    print(
        f"\nTable 1: one AutoDrop.step() vs the copy of the bytes it must touch "
        f"({args.device.type}, {str(args.dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads, "
        f"median of {args.repeats}, {CLOCK[args.device.type]})"
    )
    header = (
        f"{'model':10s} {'P':>11s} {'tensors':>7s} {'window':>7s} {'touched MB':>10s} {'step ms':>9s} "
        f"{'copy ms':>9s} {'gather ms':>9s} {'naive ms':>9s} {'step/copy':>9s} {'step/naive':>10s} {'held/param':>10s}"
    )
    if args.device.type == "cuda":
        header += f" {'peak/param':>10s} {'cpu-snapshot accel. bytes held/peak':>36s}"
    print(header)
    ok = True
    for row in rows:
        naive = f"{row.over_naive:10.3f}" if row.over_naive is not None else f"{'-':>10s}"
        naive_ms = f"{1e3 * row.naive:9.3f}" if row.naive is not None else f"{'-':>9s}"
        gather_ms = f"{1e3 * row.gather:9.3f}" if row.gather is not None else f"{'-':>9s}"
        line = (
            f"{row.name:10s} {row.num:11,d} {row.tensors:7d} {row.window:>7s} {row.touched / 1e6:10.1f} "
            f"{1e3 * row.step:9.3f} {1e3 * row.copy:9.3f} {gather_ms} {naive_ms} {row.over_copy:9.2f} {naive} "
            f"{row.held:10.2f}"
        )
        if args.device.type == "cuda":
            line += f" {row.peak:10.2f} {row.accelerator_extra:>36s}"
        misses = []
        if row.nominal >= 10**7 and row.over_naive is not None and row.over_naive > STEP_OVER_NAIVE_TARGET:
            misses.append(f"step/naive > {STEP_OVER_NAIVE_TARGET}")
        if row.held > HELD_TARGET[row.window]:
            misses.append(f"held > {HELD_TARGET[row.window]}")
        if row.accelerator_extra not in ("-", "0/0"):
            misses.append("cpu snapshot uses accelerator memory")
        ok = ok and not misses
        print(line + ("   MISSED: " + ", ".join(misses) if misses else ""))
    print(
        "gather: one torch.cat of the parameters into a flat buffer, the read of x_i as the parameters' layout "
        "allows it (a step reads x_i twice).\n"
        "held/param: AutoDrop's buffers / (P x max(4, parameter element size)); for 16-bit "
        "parameters the ratio to their own bytes is twice this."
    )
    if args.device.type == "cuda":
        print(
            "peak/param: held plus the most allocated during one step(), same unit (torch.cuda.max_memory_allocated)."
        )
    return ok


# ---------------------------------------------------------------- table 2


@dataclass(frozen=True)
class SuiteModel:
    """A benchmark-suite task's model with its training-set size, input shape and batch size."""

    task: str
    build: Callable[[], torch.nn.Module]
    samples: int
    input_shape: tuple[int, ...]
    batch_size: int
    timed_batches: int | None = None  # None: a whole epoch; else extrapolated from this many batches


SUITE = [
    SuiteModel("digits-cnn", lambda: cnn2d(1, 8, 10), 1_200, (1, 8, 8), 64),
    SuiteModel("mnist1d-cnn", lambda: cnn1d(40, 32, 10), 32_000, (40,), 128),
    SuiteModel("mnist-mlp", lambda: mlp(784, (256, 256), 10), 55_000, (1, 28, 28), 128),
    SuiteModel("cifar10-resnet18", resnet18_cifar, 45_000, (3, 32, 32), 128, timed_batches=4),
]


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, batch_size: int) -> None:
    for start in range(0, len(x), batch_size):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(
            model(x[start : start + batch_size]), y[start : start + batch_size]
        ).backward()
        optimizer.step()


def table_two(args: argparse.Namespace) -> bool:
    print(
        f"\nTable 2: per-epoch overhead on the benchmark suite's models, AutoDrop.step() / training epoch "
        f"(random tensors of the tasks' shapes and training-set sizes, SGD with momentum, "
        f"{torch.get_num_threads()} threads, {CLOCK[args.device.type]}; medians of {args.epochs} epochs per window, "
        "each step the first call after its epoch)"
    )
    print(f"{'task':18s} {'P':>11s} {'epoch s':>9s} {'step ms out/in':>17s} {'overhead out/in':>18s}")
    device, timed = args.device, stopwatch(args.device)
    ok = True
    for suite_model in SUITE:
        torch.manual_seed(0)
        model = suite_model.build().to(device)
        batches = suite_model.timed_batches
        samples = suite_model.samples if batches is None else batches * suite_model.batch_size
        x = torch.randn(samples, *suite_model.input_shape, device=device)
        y = torch.randint(0, 10, (samples,), device=device)
        params = list(model.parameters())
        optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9)
        outside, inside = scheduler_for(params, False, None), scheduler_for(params, True, None)
        train(model, optimizer, x[: suite_model.batch_size], y[: suite_model.batch_size], suite_model.batch_size)
        epochs, steps_out, steps_in = [], [], []
        for epoch in range(2 * args.epochs):
            epochs.append(timed(lambda: train(model, optimizer, x, y, suite_model.batch_size)))
            # One step per epoch, as in training: it finds its code and data cold.
            if epoch % 2:
                steps_in.append(timed(inside.step))
            else:
                steps_out.append(timed(outside.step))
        epoch = statistics.median(epochs)
        if batches is not None:
            epoch *= math.ceil(suite_model.samples / suite_model.batch_size) / batches
        step_out, step_in = statistics.median(steps_out), statistics.median(steps_in)
        worst = max(step_out, step_in) / epoch
        ok = ok and worst < EPOCH_OVERHEAD_TARGET
        note = "" if batches is None else f"  (epoch extrapolated from {batches} batches)"
        print(
            f"{suite_model.task:18s} {sum(p.numel() for p in params):11,d} {epoch:9.3f} "
            f"{1e3 * step_out:8.3f}/{1e3 * step_in:<8.3f} {100 * step_out / epoch:8.4f}%/{100 * step_in / epoch:.4f}%"
            + ("" if worst < EPOCH_OVERHEAD_TARGET else f"   MISSED: >= {100 * EPOCH_OVERHEAD_TARGET}%")
            + note
        )
    return ok


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7, 1e8], help="model sizes P")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per model and window in table 2 (0: skip)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-deep", dest="deep", action="store_false", help=f"skip the {DEEP_TENSORS}-tensor model")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available in this torch build or on this machine")
    if args.repeats < 1 or args.warmup < 0 or args.epochs < 0:
        parser.error("--repeats must be >= 1, --warmup and --epochs >= 0")
    args.device = torch.device(args.device)
    args.dtype = getattr(torch, args.dtype)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    ok = print_table_one(table_one(args), args)
    if args.epochs:
        ok = table_two(args) and ok
    print("\nall targets met" if ok else "\nsome targets MISSED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
