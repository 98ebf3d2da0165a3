"""Transfer learning: a trained BBNN's features, a new decision layer for the user's own labels.

The backbone (everything before the dense layer) is kept, frozen fully, partly or
not at all, and a fresh ``Linear(32, n_labels)`` is trained on top with the same
recipe, split, resume and output as ``train``. Frozen batch norms keep their
running statistics (see ``train.set_train_mode``), so a frozen backbone computes
exactly the features it was trained to compute.

The new model is normalised like its base (``ModelInfo.normalization``) unless the
config names another normalisation: the kept features were learnt on the base's inputs.

``default`` names the PyTorch twin of the bundled ONNX model
(``trainer/models/bbnn-gtzan-augmented-fold0.pt``), so a user can fine-tune
without the seed checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from genre_stream.common.fsutil import sha256_file
from trainer.model import BBNN

from .checkpoint import load_checkpoint
from .data import Cache, DataError
from .run import train_run
from .train import Progress, TrainConfig, no_progress

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "bbnn-gtzan-augmented-fold0.pt"
FREEZE = ("all", "partial", "none")


def resolve_checkpoint(name: str | Path) -> Path:
    """``default`` -> the bundled checkpoint; anything else is a path."""
    if str(name) == "default":
        return Path(str(resources.files("trainer") / "models" / DEFAULT_CHECKPOINT))
    return Path(name)


def frozen_modules(model: BBNN, freeze: str) -> list[nn.Module]:
    """all: the whole backbone; partial: stem and all broadcast blocks but the last; none: nothing."""
    if freeze not in FREEZE:
        raise ValueError(f"freeze must be one of {', '.join(FREEZE)}, got {freeze!r}")
    if freeze == "none":
        return []
    if freeze == "partial":
        return [model.stem, *list(model.broadcast)[:-1]]
    return [model.stem, model.broadcast, model.transition, model.head_norm]


def adapt(base: BBNN, labels: list[str], freeze: str) -> BBNN:
    """A copy of ``base`` with a new decision layer for ``labels`` and the chosen parts frozen."""
    model = BBNN(n_classes=len(labels), width=base.embedding_dim)
    state = {k: v for k, v in base.state_dict().items() if not k.startswith("classifier.")}
    model.load_state_dict(state, strict=False)
    for module in frozen_modules(model, freeze):
        for p in module.parameters():
            p.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("fine-tuning %d of %d parameters (freeze=%s)", trainable, sum(p.numel() for p in model.parameters()), freeze)
    return model


def finetune_run(checkpoint: str | Path, cache_dir: str | Path, out: str | Path, freeze: str = "partial", config: TrainConfig | None = None, progress: Progress = no_progress) -> dict[str, Any]:
    """Fine-tune ``checkpoint`` on a prepared cache; writes RUN exactly like ``train_run``.

    ``config.normalization`` None (the default) keeps the base model's normalisation.
    """
    path = resolve_checkpoint(checkpoint)
    base, info, _ = load_checkpoint(path)
    if freeze not in FREEZE:
        raise ValueError(f"freeze must be one of {', '.join(FREEZE)}, got {freeze!r}")
    config = config or TrainConfig()
    if config.normalization is None:
        config = replace(config, normalization=info.normalization)
    elif config.normalization != info.normalization:
        log.warning("%s was trained with the %s normalisation and is fine-tuned with %s: the features it brings were "
                    "learnt on other inputs (freeze=%s)", path.name, info.normalization, config.normalization, freeze)
    cache = Cache(cache_dir)
    if replace(cache.frontend, window_frames=info.frontend.window_frames) != info.frontend:
        raise DataError(f"{cache.root}: prepared with frontend {cache.frontend}, but {path} expects {info.frontend}; prepare the data again")
    provenance = {
        "trainer": "genre-trainer finetune",
        "base_model": info.model_id or path.stem,
        "base_sha256": sha256_file(path),
        "base_labels": info.labels,
        "freeze": freeze,
    }
    return train_run(cache_dir, out, config, model_factory=lambda labels: adapt(base, labels, freeze), provenance=provenance, progress=progress)
