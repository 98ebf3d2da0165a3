"""PyTorch checkpoints with the model's metadata, as written by import, train and finetune."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genre_stream.common.fsutil import atomic_path
from genre_stream.model.info import ModelInfo
from trainer.model import BBNN

FORMAT = "genre-stream-checkpoint/1"


class CheckpointError(ValueError):
    pass


def save_checkpoint(path: str | Path, model: BBNN, info: ModelInfo, extra: dict[str, Any] | None = None) -> Path:
    """Write atomically (temp file + rename): an interrupted save never leaves a truncated checkpoint."""
    payload = {
        "format": FORMAT,
        "info": info.to_json(),
        "n_classes": model.n_classes,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> tuple[BBNN, ModelInfo, dict[str, Any]]:
    """Return (model in eval mode, info, extra)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for bad files
        raise CheckpointError(f"{path}: not a genre-stream checkpoint ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a genre-stream checkpoint (missing format '{FORMAT}')")
    info = ModelInfo.from_json(payload["info"])
    model = BBNN(n_classes=int(payload["n_classes"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, info, dict(payload.get("extra", {}))
