"""What a suite runs, and running it: one training run per (task, schedule, LR, seed).

Each run trains with minibatches indexed straight from tensors (no DataLoader:
several times faster for these small models), evaluates validation loss and
test error after every epoch, then drives its schedule row once. Omega is
recorded for every schedule: AutoDrop's own ``history`` for the AutoDrop rows,
an :class:`~autodrop.AngularVelocity` beside the optimizer for the others.
Each epoch's training pass and, for the AutoDrop rows, its ``AutoDrop.step()``
are timed (``train_s``, ``autodrop_step_s``: AutoDrop's cost per epoch).
Runs go to ``runs.jsonl`` one JSON line each as they finish; a run whose key is
already there is not repeated, so an interrupted suite resumes.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..._optional import import_optional
from ...velocity import AngularVelocity
from ..cli_args import MAX_LR, resolve_device
from .schedules import SCHEDULES, Setup
from .tasks import TASKS, DataSource, load_task_data

__all__ = ["PAPER_LR_FACTORS", "SUITES", "RunSpec", "Suite", "plan_runs", "run_all", "run_one"]

# The paper's Table 2 LRs 0.03 / 0.05 / 0.1 / 0.15 around its 0.05: a 5x span.
PAPER_LR_FACTORS = (0.6, 1.0, 2.0, 3.0)
# ActiveLR's claim is robustness over orders of magnitude: 0.1x to 10x.
ACTIVE_LR_FACTORS = (0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass(frozen=True)
class Suite:
    """A set of runs: schedules compared at each task's LR, plus an initial-LR sweep.

    Args:
        name: registry key (``--suite``).
        description: one line for the report.
        tasks: task names (``tasks.TASKS``).
        schedules: rows compared at each task's default LR (``schedules.SCHEDULES``).
        seeds: seeds of the comparison.
        sweep: schedule -> multipliers of the task's LR for the sweep.
        sweep_seeds: seeds of the sweep's other LRs.
        epochs: task -> epochs for this suite (default: the task's).
    """

    name: str
    description: str
    tasks: tuple[str, ...]
    schedules: tuple[str, ...]
    seeds: int
    sweep: dict[str, tuple[float, ...]]
    sweep_seeds: int
    epochs: dict[str, int] = field(default_factory=dict)


_COMPARED = ("constant", "step", "cosine", "plateau", "autodrop", "autodrop-paper", "autodrop-smooth", "activesgd")
_PAPER_SWEEP = {"step": PAPER_LR_FACTORS, "autodrop": PAPER_LR_FACTORS}
_STOPPING = ("autodrop-stop", "step-earlystop")

SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite(
            "quick",
            "real MNIST, MLP 256-256, 60 epochs, 3 seeds: the main job, under 10 minutes on 2 cores with --jobs 2",
            ("mnist-mlp",),
            ("step", "cosine", "autodrop", "autodrop-paper"),
            seeds=3,
            sweep={},
            sweep_seeds=1,
            epochs={"mnist-mlp": 60},
        ),
        Suite(
            "standard",
            "real MNIST MLP and MNIST-1D CNN (BatchNorm), 60 epochs, 4 seeds: hours on 2 cores",
            ("mnist-mlp", "mnist1d-cnn"),
            _COMPARED + ("activeadamw",),
            seeds=4,
            sweep={**_PAPER_SWEEP, "autodrop-smooth": PAPER_LR_FACTORS, "activesgd": ACTIVE_LR_FACTORS},
            sweep_seeds=4,
            epochs={"mnist-mlp": 60, "mnist1d-cnn": 60},
        ),
        Suite(
            "long",
            "real MNIST MLP and MNIST-1D CNN (BatchNorm), 100 epochs, 3 seeds: the detector protocol "
            "and the stopping rows (144 runs, 205 CPU-minutes: about 2 h on 2 cores with --jobs 2; AdamW rows with "
            "--optimizer adamw --lrs 0.001)",
            ("mnist-mlp", "mnist1d-cnn"),
            ("step", "cosine", "plateau", "autodrop-paper", "autodrop") + _STOPPING,
            seeds=3,
            sweep={**_PAPER_SWEEP, **dict.fromkeys(_STOPPING, PAPER_LR_FACTORS)},
            sweep_seeds=3,
            epochs={"mnist-mlp": 100, "mnist1d-cnn": 100},
        ),
        Suite(
            "cifar10",
            "ResNet-18 on CIFAR-10 from --data-dir, 200 epochs, the paper's setting (GPU)",
            ("cifar10-resnet18",),
            _COMPARED,
            seeds=4,
            sweep=_PAPER_SWEEP,
            sweep_seeds=4,
        ),
        Suite(
            "tiny",
            "scikit-learn digits, small CNN with BatchNorm, 3 epochs: a smoke test, does not separate schedules",
            ("digits-cnn",),
            _COMPARED,
            seeds=1,
            sweep=_PAPER_SWEEP,
            sweep_seeds=1,
        ),
    )
}


@dataclass(frozen=True)
class RunSpec:
    """Everything one run depends on (picklable, for worker processes)."""

    task: str
    schedule: str
    optimizer: str
    lr: float
    seed: int
    epochs: int
    batch_size: int
    device: str = "auto"
    data_dir: str | None = None
    cache_dir: str | None = None

    @property
    def key(self) -> str:
        """Identity of the run's result: what it trains, not where."""
        return (
            f"{self.task}/{self.schedule}/{self.optimizer}/lr={self.lr:g}/seed={self.seed}/"
            f"epochs={self.epochs}/batch={self.batch_size}"
        )


def plan_runs(
    suite: Suite,
    *,
    optimizer: str = "sgd",
    schedules: Iterable[str] | None = None,
    seeds: int | None = None,
    epochs: int | None = None,
    lrs: Iterable[float] | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    cache_dir: str | None = None,
) -> list[RunSpec]:
    """The suite's runs: each schedule at the task's LR over ``seeds``, then the LR sweep.

    ``schedules`` restricts both parts; ``seeds`` sets both parts' seed count;
    ``lrs`` replaces the sweep's LRs (absolute values) for every sweep schedule;
    ``epochs`` overrides every task's.
    """
    chosen = list(dict.fromkeys(suite.schedules if schedules is None else schedules))
    unknown = [name for name in chosen if name not in SCHEDULES]
    if unknown:
        raise ValueError(f"--schedules {unknown} unknown; available: {sorted(SCHEDULES)}")
    lrs = None if lrs is None else sorted(set(lrs))
    if lrs is not None and any(not (math.isfinite(lr) and 0 < lr <= MAX_LR) for lr in lrs):
        raise ValueError(f"--lrs must be numbers in (0, {MAX_LR:g}], got {lrs}")
    specs: list[RunSpec] = []
    for task_name in suite.tasks:
        task = TASKS[task_name]
        task_epochs = epochs or suite.epochs.get(task_name, task.epochs)

        def spec(schedule: str, lr: float, seed: int) -> RunSpec:
            family = SCHEDULES[schedule].optimizer or optimizer
            return RunSpec(
                task_name, schedule, family, lr, seed, task_epochs, task.batch_size, device, data_dir, cache_dir
            )

        main_seeds = range(seeds or suite.seeds)
        for schedule in chosen:
            lr = task.lr[SCHEDULES[schedule].optimizer or optimizer]
            specs += [spec(schedule, lr, seed) for seed in main_seeds]
        for schedule, factors in suite.sweep.items():
            if schedule not in chosen:
                continue
            base = task.lr[SCHEDULES[schedule].optimizer or optimizer]
            sweep_lrs = lrs if lrs is not None else [round(base * f, 12) for f in factors]
            for lr in sweep_lrs:
                specs += [spec(schedule, lr, seed) for seed in range(seeds or suite.sweep_seeds)]
    return list({s.key: s for s in specs}.values())


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 2048) -> tuple[float, float]:
    """Mean cross-entropy and error in percent, in eval mode."""
    model.eval()
    loss = torch.zeros((), device=x.device)
    wrong = torch.zeros((), device=x.device)
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss += nn.functional.cross_entropy(logits, target, reduction="sum")
        wrong += (logits.argmax(1) != target).sum()
    model.train()
    return loss.item() / len(x), 100.0 * wrong.item() / len(x)


def batchnorm_refresh(model: nn.Module, inputs: Tensor, batch_size: int = 1024) -> Callable[[], None]:
    """A callback recomputing BatchNorm running statistics on ``inputs`` (no-op without BatchNorm)."""
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

    def refresh() -> None:
        if has_batchnorm:
            batches = [inputs[start : start + batch_size] for start in range(0, len(inputs), batch_size)]
            torch.optim.swa_utils.update_bn(batches, model)

    return refresh


def _progress(spec: RunSpec, position: int):
    tqdm = import_optional("tqdm.auto", "bench", "autodrop bench").tqdm
    return tqdm(
        total=spec.epochs,
        position=position,
        leave=False,
        dynamic_ncols=True,
        unit="epoch",
        desc=f"{spec.task} {spec.schedule} lr={spec.lr:g} seed {spec.seed}",
    )


def _trigger_epochs(events: list[str | None], autodrop: Any) -> list[int]:
    """Epochs whose step triggered a drop; with delay <= 1 the trigger's record says "drop"."""
    triggers = {i + 1 for i, e in enumerate(events) if e == "trigger"}
    if autodrop is not None and autodrop.delay <= 1:
        triggers |= {i + 1 for i, e in enumerate(events) if e == "drop"}
    return sorted(triggers)


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


CURVES = (
    "train_loss", "val_loss", "test_error", "epoch_lr", "omega", "delta", "threshold", "event", "train_s",
    "autodrop_step_s",
)  # fmt: skip
"""The per-epoch lists of a run's record."""


def _train_epoch(
    spec: RunSpec,
    data: Any,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[float, float]:
    """One pass over the shuffled training set; ``(mean training loss, seconds)``."""
    order = torch.randperm(len(data.x_train), generator=generator).to(device)
    total = torch.zeros((), device=device)
    start_time = _clock(device)
    for start in range(0, len(order), spec.batch_size):
        batch = order[start : start + spec.batch_size]
        inputs = data.x_train[batch]
        if data.augment is not None:
            inputs = data.augment(inputs, generator)
        loss = nn.functional.cross_entropy(model(inputs), data.y_train[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(batch)
    train_loss = total.item() / len(order)
    return train_loss, time.perf_counter() - start_time  # .item() waited for the device


def _summary(spec: RunSpec, curves: dict[str, list], autodrop: Any, diverged: bool) -> dict[str, Any]:
    """The record's numbers derived from its curves."""
    errors = curves["test_error"]
    best = min(range(len(errors)), key=errors.__getitem__)
    return {
        "final_test_error": errors[-1],
        "best_test_error": errors[best],
        "best_epoch": best + 1,
        "final_train_loss": curves["train_loss"][-1],
        "trigger_epochs": _trigger_epochs(curves["event"], autodrop),
        "drop_epochs": [i + 1 for i, e in enumerate(curves["event"]) if e == "drop"],
        "diverged": diverged,
        "stopped_epoch": len(errors) if len(errors) < spec.epochs and not diverged else None,
    }


def run_one(spec: RunSpec, position: int = 0) -> dict[str, Any]:
    """Train one run and return its record (per-epoch curves and the summary numbers)."""
    torch.manual_seed(spec.seed)
    device = resolve_device("--device", spec.device)
    task, schedule = TASKS[spec.task], SCHEDULES[spec.schedule]
    source = DataSource(spec.data_dir and Path(spec.data_dir), spec.cache_dir and Path(spec.cache_dir))
    data = load_task_data(spec.task, source).to(device)
    model = task.model(data).to(device)
    control = schedule.build(Setup(model, spec.lr, spec.optimizer, spec.epochs, batchnorm_refresh(model, data.x_train)))
    optimizer, autodrop = control.optimizer, control.autodrop
    velocity = AngularVelocity(model.parameters()) if autodrop is None else None
    generator = torch.Generator().manual_seed(spec.seed)
    curves: dict[str, list] = {name: [] for name in CURVES}
    diverged = False
    wall, cpu = time.perf_counter(), time.process_time()
    with _progress(spec, position) as bar:
        for _ in range(spec.epochs):
            epoch = {"epoch_lr": float(optimizer.param_groups[0]["lr"])}
            epoch["train_loss"], epoch["train_s"] = _train_epoch(spec, data, model, optimizer, generator, device)
            epoch["val_loss"], _ = evaluate(model, data.x_val, data.y_val)
            step_start = _clock(device)
            control.end_epoch(epoch["val_loss"])
            epoch["autodrop_step_s"] = _clock(device) - step_start if autodrop is not None else None
            if autodrop is not None:
                record = autodrop.history[-1]
                epoch.update((key, record[key]) for key in ("omega", "delta", "threshold", "event"))
            else:
                epoch.update(omega=velocity.update(), delta=None, threshold=None, event=None)
            _, epoch["test_error"] = evaluate(model, data.x_test, data.y_test)
            for name in CURVES:
                curves[name].append(epoch[name])
            omega = "-" if epoch["omega"] is None else f"{epoch['omega']:.1f}"
            bar.set_postfix(
                lr=f"{epoch['epoch_lr']:.2e}", omega=omega, err=f"{epoch['test_error']:.2f}%", refresh=False
            )
            bar.update()
            if not math.isfinite(epoch["train_loss"]):
                diverged = True
                break
            if control.should_stop():
                break
    return {
        "key": spec.key,
        **asdict(spec),
        "history": autodrop.history if autodrop is not None else None,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "num_params": sum(p.numel() for p in model.parameters()),
        "settings": control.settings,
        **curves,
        **_summary(spec, curves, autodrop, diverged),
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
    }


_position = 0


def _init_worker(positions: Any, threads: int) -> None:
    global _position
    _position = positions.get()
    torch.set_num_threads(threads)


def _run_in_worker(spec: RunSpec) -> dict[str, Any]:
    return run_one(spec, _position)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(minimum: int) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _optional(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or ok(value)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "key": ("a string", _is_str),
    "task": ("a string", _is_str),
    "schedule": ("a string", _is_str),
    "optimizer": ("a string", _is_str),
    "lr": ("a number", _is_number),
    "seed": ("an int >= 0", _is_int(0)),
    "epochs": ("an int >= 1", _is_int(1)),
    "batch_size": ("an int >= 1", _is_int(1)),
    "device": ("a string", _is_str),
    "data_dir": ("a string or null", _optional(_is_str)),
    "cache_dir": ("a string or null", _optional(_is_str)),
    "history": (
        "null or a list of objects",
        _optional(lambda value: isinstance(value, list) and all(isinstance(entry, dict) for entry in value)),
    ),
    "threads": ("an int >= 1", _is_int(1)),
    "num_params": ("an int >= 0", _is_int(0)),
    "settings": ("an object", lambda value: isinstance(value, dict)),
    "final_test_error": ("a number", _is_number),
    "best_test_error": ("a number", _is_number),
    "best_epoch": ("an int >= 1", _is_int(1)),
    "final_train_loss": ("a number", _is_number),
    "trigger_epochs": ("a list of ints >= 1", lambda value: isinstance(value, list) and all(map(_is_int(1), value))),
    "drop_epochs": ("a list of ints >= 1", lambda value: isinstance(value, list) and all(map(_is_int(1), value))),
    "diverged": ("true or false", lambda value: isinstance(value, bool)),
    "stopped_epoch": ("an int >= 1 or null", _optional(_is_int(1))),
    "wall_s": ("a number", _is_number),
    "cpu_s": ("a number", _is_number),
}
"""A run record's fields other than the curves: what each holds."""
_CURVE_VALUES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    **dict.fromkeys(("train_loss", "val_loss", "test_error", "epoch_lr", "train_s"), ("numbers", _is_number)),
    **dict.fromkeys(("omega", "delta", "threshold", "autodrop_step_s"), ("numbers or nulls", _optional(_is_number))),
    "event": ("strings or nulls", _optional(_is_str)),
}
_JSON_TYPES = {list: "an array", str: "a string", bool: "true or false", int: "a number", float: "a number"}


def _record_problem(record: Any) -> str | None:
    """What keeps ``record`` from being a run record the report can read; None if nothing."""
    if not isinstance(record, dict):
        return f"it is {'null' if record is None else _JSON_TYPES[type(record)]}, not an object"
    missing = [name for name in (*_FIELDS, *CURVES) if name not in record]
    if missing:
        return f"it lacks {', '.join(repr(name) for name in missing)}"
    for name, (allowed, ok) in _FIELDS.items():
        if not ok(record[name]):
            return f"{name!r} must be {allowed}, got {json.dumps(record[name])[:80]}"
    spec = RunSpec(**{spec_field.name: record[spec_field.name] for spec_field in fields(RunSpec)})
    if record["key"] != spec.key:
        return f"its key {record['key']!r} is not that of its run, {spec.key!r}"
    errors = record["test_error"]
    if not (isinstance(errors, list) and 1 <= len(errors) <= record["epochs"]):
        return f"'test_error' must be a list of 1 to {record['epochs']} values, one per epoch run"
    epochs = len(errors)
    for name, (allowed, ok) in _CURVE_VALUES.items():
        values = record[name]
        if not (isinstance(values, list) and len(values) == epochs):
            return f"{name!r} must be a list of {epochs} values, one per epoch run (as 'test_error')"
        if not all(map(ok, values)):
            return f"{name!r} must hold {allowed}"
    if record["history"] is not None and len(record["history"]) != epochs:
        return f"'history' must hold one entry per epoch run ({epochs})"
    late = [
        epoch for epoch in (record["best_epoch"], *record["trigger_epochs"], *record["drop_epochs"]) if epoch > epochs
    ]
    if late:
        return f"epoch {late[0]} is after the {epochs} epochs run"
    return None


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records in a ``runs.jsonl`` (empty when it does not exist).

    A last line that is not complete JSON (a run killed while its record was
    appended) is left out with a warning: that run is simply run again. Anything
    else that is not a run record (another line that does not parse, JSON of
    another shape, a folder or an unreadable file in its place) raises a
    ``ValueError`` naming the file (and line).
    """
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a runs.jsonl file: move it away or choose another --out")
    if not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeError) as error:
        raise ValueError(f"{path} cannot be read as text: {error}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                warnings.warn(
                    f"{path}: the last line is not complete JSON (an interrupted write; "
                    f"{len(line)} characters) and is ignored: that run will be repeated",
                    stacklevel=2,
                )
                break
            raise ValueError(f"{path} line {number} is not JSON ({error}); fix or remove that line") from None
        except RecursionError:
            raise ValueError(
                f"{path} line {number} is nested too deeply to be a run record; remove that line"
            ) from None
        problem = _record_problem(record)
        if problem is not None:
            raise ValueError(f"{path} line {number} is not a run record: {problem}; fix or remove that line")
        records.append(record)
    return records


def _drop_torn_tail(path: Path) -> None:
    """Cut an incomplete last line off ``runs.jsonl`` (atomically), so that appending starts on a new line."""
    if not path.exists():
        return
    text = path.read_text()
    if not text or text.endswith("\n"):
        return
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text[: text.rfind("\n") + 1])
    os.replace(temporary, path)


def run_all(
    specs: list[RunSpec],
    runs_path: Path,
    jobs: int = 1,
    on_record: Callable[[dict[str, Any], int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every spec not yet in ``runs_path`` (JSON lines, appended as runs finish).

    ``jobs > 1`` runs that many worker processes (spawned), each with
    ``cpu_count // jobs`` threads: on small models two single-thread processes
    beat one two-thread process. Returns the records of all ``specs``, those
    found in the file included, in the order of ``specs``.
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    done = {record["key"]: record for record in read_records(runs_path)}
    todo = [spec for spec in specs if spec.key not in done]
    runs_path.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_tail(runs_path)
    with runs_path.open("a") as file:

        def finish(record: dict[str, Any]) -> None:
            done[record["key"]] = record
            file.write(json.dumps(record) + "\n")
            file.flush()
            finished.append(record["key"])
            if on_record is not None:
                on_record(record, len(finished), len(todo))

        finished: list[str] = []

        if jobs == 1 or len(todo) <= 1:
            for spec in todo:
                finish(run_one(spec))
        else:
            context = multiprocessing.get_context("spawn")
            positions = context.Queue()
            for position in range(jobs):
                positions.put(position)
            threads = max(1, (os.cpu_count() or 1) // jobs)
            with ProcessPoolExecutor(
                jobs, mp_context=context, initializer=_init_worker, initargs=(positions, threads)
            ) as pool:
                for future in as_completed([pool.submit(_run_in_worker, spec) for spec in todo]):
                    finish(future.result())
    return [done[spec.key] for spec in specs]
