"""Real lightning.Trainer.fit runs with AutoDrop from configure_optimizers (CPU, seconds each)."""

import copy
import csv
import logging

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from autodrop import AutoDrop, TrendTest
from autodrop.integrations.lightning import AutoDropCallback

pytestmark = pytest.mark.filterwarnings(
    # lightning 2.6 calling a torch 2.13 deprecated pytree API; not ours to fix
    r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated",
    # the resumed fit writes its checkpoints to a new folder on purpose
    "ignore:The dirpath has changed",
)

# threshold 180 deg: the first defined change of omega (interval 3) triggers; delay 2
# averages intervals 3 and 4 and drops at 4; the cap keeps the threshold at 180.
SCHEDULE = dict(detector="paper", threshold=180.0, max_threshold=180.0, delay=2, factor=0.5)
LR = 0.1


class Regression(L.LightningModule):
    def __init__(
        self, batchnorm: bool = False, after_average=None, with_autodrop: bool = True, max_history=None, schedule=None
    ):
        super().__init__()
        self.max_history = max_history
        self.schedule = SCHEDULE if schedule is None else schedule
        layers = [torch.nn.Linear(8, 16)] + ([torch.nn.BatchNorm1d(16)] if batchnorm else []) + [torch.nn.Tanh()]
        self.net = torch.nn.Sequential(*layers, torch.nn.Linear(16, 1))
        self.after_average = after_average
        self.with_autodrop = with_autodrop

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)
        if not self.with_autodrop:
            return optimizer
        schedule = {key: copy.deepcopy(value) for key, value in self.schedule.items()}  # a fresh detector per fit
        scheduler = AutoDrop(optimizer, after_average=self.after_average, max_history=self.max_history, **schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def train_loader():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=generator)
    y = x[:, :1] * 2 + 0.1 * torch.randn(256, 1, generator=generator)
    # unshuffled: a resumed fit then sees the same batches as an uninterrupted one
    return DataLoader(TensorDataset(x, y), batch_size=32)


def fit(root, epochs, ckpt_path=None, callbacks=(), logger=False, module_class=None, **module_kwargs):
    L.seed_everything(0, verbose=False)
    module = (module_class or Regression)(**module_kwargs)
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    trainer = L.Trainer(
        max_epochs=epochs,
        default_root_dir=root,
        accelerator="cpu",
        devices=1,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[checkpoints, *callbacks],
    )
    trainer.fit(module, train_loader(), ckpt_path=ckpt_path)
    return trainer, module


def scheduler_of(trainer) -> AutoDrop:
    (config,) = trainer.lr_scheduler_configs
    return config.scheduler


def logged_rows(trainer):
    """The rows of the Trainer's CSV logger that hold AutoDrop's scalars."""
    with open(trainer.logger.experiment.metrics_file_path, newline="") as handle:
        return [row for row in csv.DictReader(handle) if row.get("autodrop/threshold")]


def test_autodrop_returned_from_configure_optimizers_drops_the_lr_once_per_epoch(tmp_path):
    trainer, module = fit(tmp_path, epochs=5)
    scheduler = scheduler_of(trainer)
    assert [r["interval"] for r in scheduler.history] == [1, 2, 3, 4, 5]
    assert [r["event"] for r in scheduler.history][:4] == [None, None, "trigger", "drop"]
    assert scheduler.history[3]["lrs"] == [LR * 0.5]
    assert trainer.optimizers[0].param_groups[0]["lr"] == scheduler.history[-1]["lrs"][0]
    assert scheduler.num_drops >= 1


def test_fit_resumed_from_ckpt_path_continues_the_same_schedule(tmp_path):
    full, _ = fit(tmp_path / "full", epochs=6)
    fit(tmp_path / "first", epochs=3)
    checkpoint = tmp_path / "first" / "checkpoints" / "epoch=2.ckpt"
    saved = torch.load(checkpoint, weights_only=True)["lr_schedulers"][0]
    assert saved["pending"] and saved["sums"] is not None  # interrupted inside the delay window
    resumed, _ = fit(
        tmp_path / "resumed",
        epochs=6,
        ckpt_path=checkpoint,
        callbacks=[AutoDropCallback()],
        logger=CSVLogger(tmp_path / "resumed", name="logs"),
    )

    reference = scheduler_of(full)
    assert sum(r["event"] == "drop" for r in reference.history) >= 1
    assert scheduler_of(resumed).history == reference.history
    for a, b in zip(resumed.lightning_module.parameters(), full.lightning_module.parameters(), strict=True):
        assert torch.equal(a, b)
    # the callback logs the resumed intervals only: the first run logged the others
    assert [float(row["autodrop/lr"]) for row in logged_rows(resumed)] == [r["lrs"][0] for r in reference.history[3:]]


def test_callback_logs_every_step_of_autodrop_to_the_trainer_loggers(tmp_path, caplog):
    callback = AutoDropCallback()
    with caplog.at_level(logging.INFO):
        trainer, _ = fit(tmp_path, epochs=5, callbacks=[callback], logger=CSVLogger(tmp_path, name="logs"))
    history = scheduler_of(trainer).history
    rows = logged_rows(trainer)
    assert len(rows) == len(history)
    for row, record in zip(rows, history, strict=True):
        assert float(row["autodrop/lr"]) == record["lrs"][0]
        assert float(row["autodrop/threshold"]) == record["threshold"]
        assert float(row["autodrop/drop"]) == float(record["event"] == "drop")
        assert (row["autodrop/omega"] == "") == (record["omega"] is None)
        if record["omega"] is not None:
            assert float(row["autodrop/omega"]) == pytest.approx(record["omega"])
    assert "AutoDrop: LR drop at interval 4" in caplog.text


def trend_schedule():
    """The default detector, scaled to a 12-epoch fit: it tests from 3 omegas on and waits at most 4."""
    return dict(detector=TrendTest(window=4, min_intervals=3, patience=1, max_wait=4), delay=2, factor=0.5)


def test_the_default_detector_logs_its_statistics_and_resumes_inside_a_phase(tmp_path):
    full, _ = fit(
        tmp_path / "full",
        epochs=12,
        callbacks=[AutoDropCallback()],
        logger=CSVLogger(tmp_path / "full", name="logs"),
        schedule=trend_schedule(),
    )
    history = scheduler_of(full).history
    assert sum(r["event"] == "drop" for r in history) >= 2
    for row, record in zip(logged_rows(full), history, strict=True):
        for key in ("slope", "noise", "passes", "phase", "wait"):
            assert (row[f"autodrop/{key}"] == "") == (record[key] is None)
            if record[key] is not None:
                assert float(row[f"autodrop/{key}"]) == pytest.approx(record[key])
    fit(tmp_path / "first", epochs=10, schedule=trend_schedule())
    checkpoint = tmp_path / "first" / "checkpoints" / "epoch=9.ckpt"
    saved = torch.load(checkpoint, weights_only=True)["lr_schedulers"][0]
    assert saved["pending"] and saved["detector"]["first_phase"] is not None  # in the second phase's window
    resumed, _ = fit(tmp_path / "resumed", epochs=12, ckpt_path=checkpoint, schedule=trend_schedule())
    assert scheduler_of(resumed).history == history


def test_callback_logs_every_interval_when_the_history_is_capped(tmp_path):
    trainer, _ = fit(
        tmp_path, epochs=5, callbacks=[AutoDropCallback()], logger=CSVLogger(tmp_path, name="logs"), max_history=2
    )
    history = scheduler_of(trainer).history
    rows = logged_rows(trainer)
    assert [r["interval"] for r in history] == [4, 5] and len(rows) == 5
    assert [float(row["autodrop/lr"]) for row in rows[-2:]] == [r["lrs"][0] for r in history]


def batchnorm_buffers(module):
    bn = module.net[1]
    return bn.running_mean.clone(), bn.running_var.clone()


def test_callback_refreshes_batchnorm_statistics_after_the_averaging_drop(tmp_path):
    # 4 epochs: the run ends on the averaging drop, so the final statistics are the refreshed ones
    refreshed_trainer, refreshed = fit(
        tmp_path / "a", epochs=4, callbacks=[AutoDropCallback(refresh_batchnorm=True)], batchnorm=True
    )
    assert scheduler_of(refreshed_trainer).history[-1]["event"] == "drop"
    expected = copy.deepcopy(refreshed)
    torch.optim.swa_utils.update_bn(train_loader(), expected)
    for got, want in zip(batchnorm_buffers(refreshed), batchnorm_buffers(expected), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert scheduler_of(refreshed_trainer).after_average is None  # the callback removes its hook at the end

    _, stale = fit(tmp_path / "b", epochs=4, callbacks=[AutoDropCallback()], batchnorm=True)
    assert not torch.allclose(batchnorm_buffers(stale)[1], batchnorm_buffers(expected)[1], rtol=1e-3)


def test_callback_refuses_a_run_without_autodrop(tmp_path):
    with pytest.raises(ValueError, match="needs an AutoDrop scheduler.*found none"):
        fit(tmp_path, epochs=1, callbacks=[AutoDropCallback()], with_autodrop=False)


def test_callback_refuses_to_replace_an_after_average_hook(tmp_path):
    with pytest.raises(ValueError, match="already has an after_average"):
        fit(tmp_path, epochs=1, callbacks=[AutoDropCallback(refresh_batchnorm=True)], after_average=lambda: None)


def test_callback_arguments_are_checked():
    with pytest.raises(TypeError, match="refresh_batchnorm must be a bool"):
        AutoDropCallback(refresh_batchnorm="yes")
    with pytest.raises(TypeError, match="batch_input must be callable"):
        AutoDropCallback(batch_input=3)
    with pytest.raises(TypeError, match="prefix must be a str"):
        AutoDropCallback(prefix=None)
    with pytest.raises(TypeError, match="stop_when_converged must be a bool"):
        AutoDropCallback(stop_when_converged=1)


def test_stop_when_converged_ends_the_fit_and_resumes_across_the_converged_state(tmp_path):
    # SCHEDULE triggers at every chance: trigger 3, drop 4, trigger 5, converged 6 with max_drops=1.
    schedule = {**SCHEDULE, "max_drops": 1}
    full, _ = fit(
        tmp_path / "full", epochs=20, callbacks=[AutoDropCallback(stop_when_converged=True)], schedule=schedule
    )
    reference = scheduler_of(full)
    assert reference.converged and full.current_epoch == 6
    assert [(r["interval"], r["event"]) for r in reference.history if r["event"]] == [
        (3, "trigger"),
        (4, "drop"),
        (5, "trigger"),
        (6, "converged"),
    ]

    inside = tmp_path / "full" / "checkpoints" / "epoch=4.ckpt"  # inside the final window
    assert torch.load(inside, weights_only=True)["lr_schedulers"][0]["pending"]
    resumed, _ = fit(
        tmp_path / "resumed",
        epochs=20,
        ckpt_path=inside,
        callbacks=[AutoDropCallback(stop_when_converged=True)],
        schedule=schedule,
    )
    assert resumed.current_epoch == 6 and scheduler_of(resumed).history == reference.history
    for a, b in zip(resumed.lightning_module.parameters(), full.lightning_module.parameters(), strict=True):
        assert torch.equal(a, b)

    after = tmp_path / "full" / "checkpoints" / "epoch=5.ckpt"  # converged
    again, _ = fit(
        tmp_path / "again",
        epochs=20,
        ckpt_path=after,
        callbacks=[AutoDropCallback(stop_when_converged=True)],
        schedule=schedule,
    )
    assert again.current_epoch == 6 and scheduler_of(again).history == reference.history  # stops before training
    for a, b in zip(again.lightning_module.parameters(), full.lightning_module.parameters(), strict=True):
        assert torch.equal(a, b)

    unstopped, _ = fit(tmp_path / "unstopped", epochs=8, callbacks=[AutoDropCallback()], schedule=schedule)
    assert unstopped.current_epoch == 8 and scheduler_of(unstopped).converged


class TwoOptimizers(L.LightningModule):
    """GAN-style: two optimizers stepped by hand, each with its AutoDrop, stepped at each epoch's end."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.first, self.second = torch.nn.Linear(8, 1), torch.nn.Linear(8, 1)
        self.stepped_in = []  # the epoch of each AutoDrop step

    def training_step(self, batch, batch_idx):
        x, y = batch
        for optimizer, net in zip(self.optimizers(), (self.first, self.second)):
            optimizer.zero_grad()
            self.manual_backward(torch.nn.functional.mse_loss(net(x), y))
            optimizer.step()

    def on_train_epoch_end(self):
        self.stepped_in.append(self.current_epoch)
        for scheduler in self.lr_schedulers():
            scheduler.step()

    def configure_optimizers(self):
        optimizers = [torch.optim.SGD(net.parameters(), lr=LR) for net in (self.first, self.second)]
        return optimizers, [AutoDrop(optimizer, **SCHEDULE) for optimizer in optimizers]


def test_two_autodrops_are_logged_each_under_its_own_prefix_and_epoch(tmp_path, caplog):
    L.seed_everything(0, verbose=False)
    callback = AutoDropCallback()
    trainer = L.Trainer(
        max_epochs=5,
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(tmp_path, name="logs"),
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        callbacks=[callback],
    )
    module = TwoOptimizers()
    with caplog.at_level(logging.INFO):
        trainer.fit(module, train_loader())
    assert callback.scheduler is None and len(callback.schedulers) == 2
    with open(trainer.logger.experiment.metrics_file_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for index, scheduler in enumerate(callback.schedulers):
        logged = [row for row in rows if row.get(f"autodrop/{index}/lr")]
        assert [float(row[f"autodrop/{index}/lr"]) for row in logged] == [r["lrs"][0] for r in scheduler.history]
        # each row in the epoch whose end stepped it (stepped by hand after the epoch's last batch)
        assert [int(row["epoch"]) for row in logged] == module.stepped_in == [0, 1, 2, 3, 4]
        drops = [r["interval"] for r in scheduler.history if r["event"] == "drop"]
        assert drops and all(f"{index}: LR drop at interval {i} (epoch {i - 1})" in caplog.text for i in drops)


def warmup_schedule(optimizer):
    autodrop = AutoDrop(optimizer, **SCHEDULE)
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=3)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, autodrop], milestones=[3])


class Warmup(Regression):
    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup_schedule(optimizer), "interval": "epoch"}}


def test_warmup_then_autodrop_reaches_the_base_lr_and_resumes_from_every_epoch(tmp_path):
    def run(root, epochs, ckpt_path=None):
        callback = AutoDropCallback()
        trainer, _ = fit(root, epochs, ckpt_path, callbacks=[callback], module_class=Warmup)
        return trainer, callback.scheduler

    full, autodrop = run(tmp_path / "full", 10)
    lrs = [r["lrs"][0] for r in autodrop.history]
    assert lrs[0] == LR and len(autodrop.history) == 10 - 3  # the warmup's epochs are not AutoDrop's intervals
    assert autodrop.num_drops >= 1
    for epoch in range(9):  # warmup epochs included
        resumed, resumed_autodrop = run(
            tmp_path / f"resumed{epoch}", 10, tmp_path / "full" / "checkpoints" / f"epoch={epoch}.ckpt"
        )
        assert resumed_autodrop.history == autodrop.history, epoch
        for a, b in zip(resumed.lightning_module.parameters(), full.lightning_module.parameters(), strict=True):
            assert torch.equal(a, b), epoch
