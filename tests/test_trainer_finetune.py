"""Freezing for fine-tuning, and the batch-norm re-estimation training relies on (no training here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trainer.checkpoint import load_checkpoint
from trainer.finetune import adapt, resolve_checkpoint
from trainer.model import BBNN
from trainer.train import recalibrate_batch_norm, set_train_mode

pytestmark = pytest.mark.train  # needs the [train] extra


@pytest.fixture(scope="module")
def base() -> BBNN:
    model, info, _ = load_checkpoint(resolve_checkpoint("default"))
    assert len(info.labels) == 10
    return model


def _trainable(model: nn.Module) -> set[str]:
    return {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}


def test_freeze_levels(base: BBNN) -> None:
    assert _trainable(adapt(base, ["x", "y"], "all")) == {"classifier"}
    partial = adapt(base, ["x", "y"], "partial")
    assert _trainable(partial) == {"broadcast", "transition", "head_norm", "classifier"}
    assert not any(p.requires_grad for p in partial.broadcast[1].parameters())
    assert all(p.requires_grad for p in partial.broadcast[2].parameters())
    assert _trainable(adapt(base, ["x", "y"], "none")) == {"stem", "broadcast", "transition", "head_norm", "classifier"}
    with pytest.raises(ValueError, match="freeze must be one of"):
        adapt(base, ["x", "y"], "some")


def test_adapted_model_keeps_the_base_features(base: BBNN) -> None:
    model = adapt(base, ["x", "y", "z"], "all").eval()
    x = torch.rand(2, 64, 128)
    with torch.no_grad():
        assert torch.allclose(model.embed(x), base.eval().embed(x), atol=1e-6)
        assert model(x)[0].shape == (2, 3)


def test_frozen_batch_norms_stay_in_eval_mode(base: BBNN) -> None:
    model = adapt(base, ["x", "y"], "partial")
    set_train_mode(model)
    assert not model.stem[1].training and not model.broadcast[0].branch1[0].training
    assert model.broadcast[2].branch1[0].training and model.head_norm[0].training
    before = model.stem[1].running_mean.clone()
    model(torch.rand(4, 32, 128))
    assert torch.equal(model.stem[1].running_mean, before)


def test_recalibration_gives_the_exact_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3, momentum=0.01))
    model[0].running_mean.fill_(5.0)  # stale statistics, as after fast-moving weights
    batches = [np.random.default_rng(i).normal(2.0, 3.0, size=(8, 3)).astype(np.float32) for i in range(4)]
    recalibrate_batch_norm(model, batches, torch.device("cpu"))
    data = np.concatenate(batches)
    np.testing.assert_allclose(model[0].running_mean.numpy(), data.mean(axis=0), rtol=1e-5)
    assert model[0].momentum == 0.01 and not model.training
