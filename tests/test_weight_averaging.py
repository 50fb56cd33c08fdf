"""WeightAveraging: the exact mean of end-of-epoch weights, resuming, BatchNorm statistics, off by default."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from mssn_monai.handlers import TrainingCheckpoint, WeightAveraging
from mssn_monai.keys import PatchKeys


def _engine(net: torch.nn.Module) -> Engine:
    """An engine whose epoch ``e`` leaves every weight of ``net`` at ``e`` (one iteration per epoch)."""

    def step(engine: Engine, batch: object) -> None:
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(float(engine.state.epoch))

    return Engine(step)


@pytest.mark.parametrize(
    ("start", "expected"),
    [(3, (3 + 4 + 5 + 6) / 4), (6, 6.0), (0, 6.0), (9, 6.0)],  # 0: off; 9: no epoch reaches it, last weights kept
)
def test_the_weights_end_as_the_mean_of_the_epochs_from_start(start, expected):
    net = torch.nn.Linear(3, 2)
    engine = _engine(net)
    handler = WeightAveraging(net, start_epoch=start, bn_batches=0)
    handler.attach(engine)
    engine.run([0], max_epochs=6)
    assert handler.count == (0 if start in (0, 9) else 7 - start)
    for p in net.parameters():
        torch.testing.assert_close(p, torch.full_like(p, expected))


def test_a_resumed_run_ends_with_the_same_mean(tmp_path):
    """Killed after epoch 4 (checkpoint with the handler in it), resumed to 6: the mean of 3..6."""
    net = torch.nn.Linear(3, 2)
    engine = _engine(net)
    first = WeightAveraging(net, start_epoch=3, bn_batches=0)
    TrainingCheckpoint(tmp_path, "fpr_train", {"network": net, "weight_average": first}).attach(engine)
    first.attach(engine)
    engine.run([0], max_epochs=4)  # COMPLETED averaged 3, 4 into net: a kill would not have
    assert (tmp_path / "fpr_train_checkpoint_epoch=4.pt").is_file()

    net2 = torch.nn.Linear(3, 2)
    engine2 = _engine(net2)
    second = WeightAveraging(net2, start_epoch=3, bn_batches=0)
    TrainingCheckpoint(tmp_path, "fpr_train", {"network": net2, "weight_average": second}).attach(engine2)
    second.attach(engine2)
    engine2.run([0], max_epochs=6)
    for p in net2.parameters():
        torch.testing.assert_close(p, torch.full_like(p, (3 + 4 + 5 + 6) / 4))


def test_batch_norm_statistics_are_recomputed_over_the_batches():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1, bias=False), torch.nn.BatchNorm2d(2))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2, 3).view(2, 3, 1, 1))  # the BatchNorm sees channels 0 and 1 of the input
    batches = [{PatchKeys.IMAGE: torch.randn(4, 3, 5, 5) + i} for i in range(3)]
    handler = WeightAveraging(net, start_epoch=1, bn_batches=2)
    handler.add(1)
    handler.apply()
    handler.update_batch_norm(batches)
    seen = torch.cat([b[PatchKeys.IMAGE][:, :2] for b in batches[:2]])  # the first two batches only
    torch.testing.assert_close(net[1].running_mean, seen.mean(dim=(0, 2, 3)))
    per_batch_var = torch.stack([b[PatchKeys.IMAGE][:, :2].var(dim=(0, 2, 3)) for b in batches[:2]])
    torch.testing.assert_close(net[1].running_var, per_batch_var.mean(0))  # a plain mean of the batches' (unbiased)
    assert net[1].momentum == 0.1 and net.training


@pytest.mark.parametrize("kwargs", [{"start_epoch": -1}, {"bn_batches": -2}])
def test_negative_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="must be >= 0"):
        WeightAveraging(torch.nn.Linear(1, 1), **kwargs)


def test_a_checkpoint_leaves_out_entries_that_are_none(tmp_path):
    """An option that is off adds nothing: checkpoints made before it existed still resume."""
    net = torch.nn.Linear(2, 1)
    engine = Engine(lambda e, b: None)
    TrainingCheckpoint(tmp_path, "fpr_train", {"network": net}).attach(engine)
    engine.run([0], max_epochs=1)
    engine2 = Engine(lambda e, b: None)
    TrainingCheckpoint(tmp_path, "fpr_train", {"network": net, "weight_average": None}).attach(engine2)
    engine2.run([0], max_epochs=2)  # resumes from epoch 1 without a 'weight_average' entry
    assert engine2.state.epoch == 2
