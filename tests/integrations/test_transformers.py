"""Real transformers.Trainer runs with AutoDropCallback on a tiny model built from a config (CPU, offline)."""

import logging

import pytest
import torch
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    get_constant_schedule,
)

from autodrop.integrations.transformers import STATE_FILE, AutoDropCallback

SCHEDULE = dict(detector="paper", threshold=180.0, max_threshold=180.0, delay=2, factor=0.5)  # trigger at 3, drop at 4
LR = 0.1
STEPS_PER_EPOCH = 8  # 256 samples, batch 32


class TinyConfig(PretrainedConfig):
    model_type = "autodrop-tiny-regressor"

    def __init__(self, features: int = 8, hidden: int = 16, **kwargs):
        self.features, self.hidden = features, hidden
        super().__init__(**kwargs)


class TinyRegressor(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__(config)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(config.features, config.hidden), torch.nn.Tanh(), torch.nn.Linear(config.hidden, 1)
        )
        self.post_init()

    def forward(self, x, labels=None):
        prediction = self.net(x)
        loss = None if labels is None else torch.nn.functional.mse_loss(prediction, labels)
        return {"loss": loss, "logits": prediction}


class Regression(torch.utils.data.Dataset):
    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(256, 8, generator=generator)
        self.y = self.x[:, :1] * 2 + 0.1 * torch.randn(256, 1, generator=generator)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {"x": self.x[index], "labels": self.y[index]}


class UsedLearningRates(TrainerCallback):
    """The LR of every optimizer step, read right after the step used it."""

    def __init__(self):
        self.lrs = []

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append(optimizer.param_groups[0]["lr"])


class StopAfterEpochs(TrainerCallback):
    def __init__(self, epochs):
        self.epochs = epochs

    def on_epoch_end(self, args, state, control, **kwargs):
        if round(state.epoch) == self.epochs:
            control.should_training_stop = True


def make_trainer(output_dir, epochs=5, scheduler_type="constant", max_steps=-1, **overrides):
    settings = dict(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        max_steps=max_steps,
        per_device_train_batch_size=32,
        learning_rate=LR,
        lr_scheduler_type=scheduler_type,
        optim="sgd",
        weight_decay=0.0,
        save_strategy="epoch",
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    args = TrainingArguments(**{**settings, **overrides})
    torch.manual_seed(0)
    return Trainer(model=TinyRegressor(TinyConfig()), args=args, train_dataset=Regression())


def autodrop_logs(trainer):
    return [entry for entry in trainer.state.log_history if "autodrop/threshold" in entry]


def test_constant_lambda_lr_alone_would_undo_a_drop():
    # why the callback writes into the Trainer's scheduler: LambdaLR recomputes lr = base_lr * 1
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=LR)
    constant = get_constant_schedule(optimizer)
    optimizer.param_groups[0]["lr"] = LR / 2
    optimizer.step()
    constant.step()
    assert optimizer.param_groups[0]["lr"] == LR


def test_callback_drops_the_lr_at_epoch_ends_and_the_drop_sticks(tmp_path, caplog):
    trainer = make_trainer(tmp_path)
    callback = AutoDropCallback(trainer, **SCHEDULE)
    used = UsedLearningRates()
    trainer.add_callback(callback)
    trainer.add_callback(used)
    with caplog.at_level(logging.INFO, logger="autodrop.integrations.transformers"):
        trainer.train()

    history = callback.scheduler.history
    assert [r["event"] for r in history][:4] == [None, None, "trigger", "drop"]
    assert len(history) == 5
    # the LR every optimizer step used: the Trainer's own scheduler never restores 0.1 after a drop
    expected = [record["lrs"][0] for record in history for _ in range(STEPS_PER_EPOCH)]
    assert used.lrs == [LR] * STEPS_PER_EPOCH + expected[:-STEPS_PER_EPOCH]
    assert trainer.optimizer.param_groups[0]["lr"] == history[-1]["lrs"][0]
    # the Trainer's own "learning_rate" log agrees, step by step
    logged = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert logged == used.lrs

    logs = autodrop_logs(trainer)
    assert [entry["step"] for entry in logs] == [STEPS_PER_EPOCH * i for i in range(1, 6)]
    assert [entry["autodrop/lr"] for entry in logs] == [r["lrs"][0] for r in history]
    assert [entry["autodrop/drop"] for entry in logs] == [float(r["event"] == "drop") for r in history]
    assert "AutoDrop: LR drop at interval 4 (global step 32)" in caplog.text


def test_callback_steps_every_n_optimizer_steps(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=20, save_strategy="no")
    callback = AutoDropCallback(trainer, every_n_steps=4, **SCHEDULE)
    trainer.add_callback(callback)
    trainer.train()
    assert [entry["step"] for entry in autodrop_logs(trainer)] == [4, 8, 12, 16, 20]
    assert [r["event"] for r in callback.scheduler.history][2:4] == ["trigger", "drop"]


def test_resume_from_checkpoint_continues_the_same_schedule(tmp_path):
    full = make_trainer(tmp_path / "full", epochs=6)
    full_callback = AutoDropCallback(full, **SCHEDULE)
    full.add_callback(full_callback)
    full.train()

    first = make_trainer(tmp_path / "run", epochs=6)
    first.add_callback(AutoDropCallback(first, **SCHEDULE))
    first.add_callback(StopAfterEpochs(3))
    first.train()
    checkpoint = tmp_path / "run" / f"checkpoint-{3 * STEPS_PER_EPOCH}"
    assert torch.load(checkpoint / STATE_FILE, weights_only=True)["pending"]  # inside the delay window

    resumed = make_trainer(tmp_path / "run", epochs=6)
    resumed_callback = AutoDropCallback(resumed, **SCHEDULE)
    resumed.add_callback(resumed_callback)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    assert sum(r["event"] == "drop" for r in full_callback.scheduler.history) >= 1
    assert resumed_callback.scheduler.history == full_callback.scheduler.history
    for a, b in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        assert torch.equal(a, b)


def full_and_stopped_runs(tmp_path, epochs=6, stop_after=3, **schedule):
    """An uninterrupted run in tmp_path/full, and the same run stopped after ``stop_after`` epochs in tmp_path/run."""
    schedule = {**SCHEDULE, **schedule}
    full = make_trainer(tmp_path / "full", epochs=epochs)
    full_callback = AutoDropCallback(full, **schedule)
    full.add_callback(full_callback)
    full.train()
    first = make_trainer(tmp_path / "run", epochs=epochs)
    first.add_callback(AutoDropCallback(first, **schedule))
    first.add_callback(StopAfterEpochs(stop_after))
    first.train()
    return full, full_callback


def assert_resumes_exactly(output_dir, checkpoint, full, full_callback, epochs=6):
    resumed = make_trainer(output_dir, epochs=epochs)
    resumed_callback = AutoDropCallback(resumed, **SCHEDULE)
    resumed.add_callback(resumed_callback)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed_callback.scheduler.history == full_callback.scheduler.history
    for a, b in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_outside_output_dir_resumes_exactly(tmp_path):
    full, full_callback = full_and_stopped_runs(tmp_path)
    checkpoint = tmp_path / "run" / f"checkpoint-{3 * STEPS_PER_EPOCH}"
    assert_resumes_exactly(tmp_path / "elsewhere", str(checkpoint), full, full_callback)


def test_another_runs_same_numbered_checkpoint_in_output_dir_is_not_read(tmp_path):
    full, full_callback = full_and_stopped_runs(tmp_path)
    other = make_trainer(tmp_path / "other", epochs=6)  # another schedule: its state would change the drops
    other.add_callback(AutoDropCallback(other, **{**SCHEDULE, "factor": 0.25}))
    other.add_callback(StopAfterEpochs(3))
    other.train()
    step = 3 * STEPS_PER_EPOCH
    assert (tmp_path / "other" / f"checkpoint-{step}" / STATE_FILE).is_file()
    assert_resumes_exactly(tmp_path / "other", str(tmp_path / "run" / f"checkpoint-{step}"), full, full_callback)


def test_resume_from_checkpoint_true_reads_the_last_checkpoint_in_output_dir(tmp_path):
    full, full_callback = full_and_stopped_runs(tmp_path)
    assert_resumes_exactly(tmp_path / "run", True, full, full_callback)


def test_a_state_of_another_run_is_refused_naming_both(tmp_path):
    full_and_stopped_runs(tmp_path, epochs=4)
    run = tmp_path / "run"
    checkpoint = run / f"checkpoint-{3 * STEPS_PER_EPOCH}"
    # a state two intervals long in a checkpoint three epochs in
    (checkpoint / STATE_FILE).write_bytes((run / f"checkpoint-{2 * STEPS_PER_EPOCH}" / STATE_FILE).read_bytes())
    resumed = make_trainer(run, epochs=4)
    resumed.add_callback(AutoDropCallback(resumed, **SCHEDULE))
    with pytest.raises(ValueError, match=r"checkpoint-24.autodrop_scheduler.pt has 2 intervals.*after 3 epoch ends"):
        resumed.train(resume_from_checkpoint=str(checkpoint))

    # a state of a model with other parameter shapes (two groups, as the Trainer makes: weights, biases)
    from autodrop import AutoDrop

    narrower = TinyRegressor(TinyConfig(hidden=4)).named_parameters()
    groups = [{"params": []}, {"params": []}]
    for name, parameter in narrower:
        groups[name.endswith("bias")]["params"].append(parameter)
    torch.save(AutoDrop(torch.optim.SGD(groups, lr=LR), **SCHEDULE).state_dict(), checkpoint / STATE_FILE)
    resumed = make_trainer(run, epochs=4)
    resumed.add_callback(AutoDropCallback(resumed, **SCHEDULE))
    with pytest.raises(ValueError, match=rf"checkpoint-24.{STATE_FILE} does not fit this run.*\(41,\).*\(161,\)"):
        resumed.train(resume_from_checkpoint=str(checkpoint))


def test_resume_without_autodrop_state_is_a_clear_error(tmp_path):
    plain = make_trainer(tmp_path, epochs=1)
    plain.train()
    resumed = make_trainer(tmp_path, epochs=2)
    resumed.add_callback(AutoDropCallback(resumed, **SCHEDULE))
    with pytest.raises(FileNotFoundError, match=f"checkpoint-{STEPS_PER_EPOCH}.{STATE_FILE} does not exist"):
        resumed.train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{STEPS_PER_EPOCH}"))


def test_a_schedule_that_would_fight_autodrop_is_refused(tmp_path):
    with pytest.raises(ValueError, match="lr_scheduler_type='constant'.*got lr_scheduler_type='linear'"):
        AutoDropCallback(make_trainer(tmp_path, scheduler_type="linear"))

    trainer = make_trainer(tmp_path)
    optimizer = torch.optim.SGD(trainer.model.parameters(), lr=LR)
    trainer = Trainer(
        model=trainer.model,
        args=trainer.args,
        train_dataset=Regression(),
        optimizers=(optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=4)),
    )
    trainer.add_callback(AutoDropCallback(trainer))
    with pytest.raises(ValueError, match="got StepLR"):
        trainer.train()


def test_callback_arguments_are_checked(tmp_path):
    trainer = make_trainer(tmp_path)
    with pytest.raises(TypeError, match="must be a transformers.Trainer"):
        AutoDropCallback(object())
    with pytest.raises(ValueError, match="every_n_steps must be an int >= 1, got 0"):
        AutoDropCallback(trainer, every_n_steps=0)
    with pytest.raises(TypeError, match="every_n_steps must be an int >= 1, got 2.0"):
        AutoDropCallback(trainer, every_n_steps=2.0)
    with pytest.raises(TypeError, match="delays"):
        AutoDropCallback(trainer, delays=3)
    with pytest.raises(TypeError, match="do not pass optimizer"):
        AutoDropCallback(trainer, optimizer=None)
    with pytest.raises(TypeError, match="prefix must be a str"):
        AutoDropCallback(trainer, prefix=1)
    with pytest.raises(TypeError, match="stop_when_converged must be a bool"):
        AutoDropCallback(trainer, stop_when_converged="yes")


def test_stop_when_converged_ends_training_and_resumes_across_the_converged_state(tmp_path):
    schedule = {**SCHEDULE, "max_drops": 1}  # trigger 3, drop 4, trigger 5, converged 6
    full = make_trainer(tmp_path / "full", epochs=20)
    full_callback = AutoDropCallback(full, stop_when_converged=True, **schedule)
    full.add_callback(full_callback)
    full.train()
    history = full_callback.scheduler.history
    assert [(r["interval"], r["event"]) for r in history if r["event"]] == [
        (3, "trigger"),
        (4, "drop"),
        (5, "trigger"),
        (6, "converged"),
    ]
    assert full.state.global_step == 6 * STEPS_PER_EPOCH and len(history) == 6
    assert [entry["autodrop/converged"] for entry in autodrop_logs(full)] == [0.0] * 5 + [1.0]

    inside = tmp_path / "full" / f"checkpoint-{5 * STEPS_PER_EPOCH}"  # inside the final window
    assert torch.load(inside / STATE_FILE, weights_only=True)["pending"]
    resumed = make_trainer(tmp_path / "full", epochs=20)
    resumed_callback = AutoDropCallback(resumed, stop_when_converged=True, **schedule)
    resumed.add_callback(resumed_callback)
    resumed.train(resume_from_checkpoint=str(inside))
    assert resumed.state.global_step == 6 * STEPS_PER_EPOCH and resumed_callback.scheduler.history == history
    for a, b in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        assert torch.equal(a, b)

    converged = tmp_path / "full" / f"checkpoint-{6 * STEPS_PER_EPOCH}"
    again = make_trainer(tmp_path / "full", epochs=20)
    again_callback = AutoDropCallback(again, stop_when_converged=True, **schedule)
    again.add_callback(again_callback)
    again.train(resume_from_checkpoint=str(converged))
    assert again_callback.scheduler.converged and again_callback.scheduler.history == history
    # stopped after the one optimizer step the Trainer takes before it looks at should_training_stop
    assert again.state.global_step == 6 * STEPS_PER_EPOCH + 1


def test_the_state_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, epochs=1)
    trainer.add_callback(AutoDropCallback(trainer, **SCHEDULE))
    original = torch.save

    def killed(obj, path, *args, **kwargs):
        if str(path).endswith(STATE_FILE + ".tmp"):
            with open(path, "wb") as file:
                file.write(b"PK\x03\x04 half")
            raise KeyboardInterrupt
        return original(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    monkeypatch.undo()
    folder = tmp_path / f"checkpoint-{STEPS_PER_EPOCH}"
    assert not (folder / STATE_FILE).exists()  # no file that looks complete
    (folder / STATE_FILE).write_bytes(b"PK\x03\x04 half")  # one damaged some other way
    resumed = make_trainer(tmp_path, epochs=2)
    resumed.add_callback(AutoDropCallback(resumed, **SCHEDULE))
    with pytest.raises(RuntimeError, match=f"{STATE_FILE} cannot be read"):
        resumed.train(resume_from_checkpoint=str(folder))


def test_the_trainers_own_epoch_logs_still_reach_the_log_history(tmp_path):
    trainer = make_trainer(tmp_path, epochs=3, logging_strategy="epoch", save_strategy="no")
    trainer.add_callback(AutoDropCallback(trainer, **SCHEDULE))
    trainer.train()
    own = [entry for entry in trainer.state.log_history if "loss" in entry and "learning_rate" in entry]
    assert len(own) == 3 and all("grad_norm" in entry for entry in own)
    assert len(autodrop_logs(trainer)) == 3


def test_the_documented_custom_scheduler_route_warns_that_it_steps_per_optimizer_step(tmp_path):
    from autodrop import AutoDrop

    trainer = make_trainer(tmp_path, epochs=2, save_strategy="no")
    optimizer = torch.optim.SGD(trainer.model.parameters(), lr=LR)
    trainer = Trainer(
        model=trainer.model,
        args=trainer.args,
        train_dataset=Regression(),
        optimizers=(optimizer, AutoDrop(optimizer, delay=2)),
    )
    with pytest.warns(RuntimeWarning, match="followed every optimizer step for 10 intervals.*AutoDropCallback"):
        trainer.train()


def test_every_n_steps_intervals_are_per_step_on_purpose_and_do_not_warn(tmp_path, recwarn):
    trainer = make_trainer(tmp_path, max_steps=24, save_strategy="no")
    callback = AutoDropCallback(trainer, every_n_steps=1, **SCHEDULE)
    trainer.add_callback(callback)
    trainer.train()
    assert callback.scheduler.interval == "steps" and len(callback.scheduler.history) == 24
    assert not [w for w in recwarn if "followed every optimizer step" in str(w.message)]
