"""A training run: folds in ``RUN.partial``, resumable after a crash, renamed to ``RUN`` when complete.

``train_run`` checks the cache against the configuration, trains each fold (``train.FoldTrainer``),
writes each fold's checkpoint, report and plots, and the run's summary; the recipe itself is in
``train.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genre_stream import __version__ as genre_stream_version
from genre_stream.audio.normalization import SEED
from genre_stream.common.fsutil import atomic_path

from .checkpoint import save_checkpoint
from .data import Cache, DataError, check_labels
from .distributed import Dist, TrainError, distributed
from .inputs import DEFAULT_NORMALIZATION, ModelInput
from .model import BBNN
from .plots import plot_confusion, plot_curves
from .split import PARTS, Split, fold_split, thin_split_warnings
from .train import BEST_SO_FAR, LOG_FILE, FoldState, FoldTrainer, ModelFactory, Progress, TrainConfig, no_progress

log = logging.getLogger(__name__)


def _versions() -> dict[str, str]:
    return {"genre_stream": genre_stream_version, "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))


@dataclass
class RunSpec:
    """What makes a run a run: resuming requires the same spec."""

    cache_manifest_sha256: str
    config: dict[str, Any]
    labels: list[str]
    extra: dict[str, Any] = field(default_factory=dict)


def _labels_by_source(cache: Cache) -> dict[str, str]:
    return {cache.entries[i].path: cache.entries[i].label for i in cache.originals()}


def _check_cache(cache: Cache, config: TrainConfig) -> ModelInput:
    """Validate data and options before anything is written; returns the model's input rule (window, normalisation)."""
    window = config.window_frames or cache.window_frames
    if window > cache.window_frames:
        raise TrainError(f"--window-frames {window} is longer than the cache's {cache.window_frames}; prepare the cache with --window-frames {window}")
    if window < 16:
        raise TrainError(f"--window-frames {window} is too short for BBNN (needs >= 16 frames)")
    if config.folds < 1 or config.folds > PARTS:
        raise TrainError(f"--folds must be between 1 and {PARTS}, got {config.folds}")
    try:
        check_labels({label: sum(1 for i in cache.originals() if cache.entries[i].label == label) for label in cache.labels}, str(cache.root))
        return ModelInput(config.normalization, window, cache.frontend.top_db)
    except (DataError, ValueError) as exc:
        raise TrainError(str(exc)) from exc


def train_run(
    cache_dir: str | Path,
    out: str | Path,
    config: TrainConfig | None = None,
    model_factory: ModelFactory | None = None,
    provenance: dict[str, Any] | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Train (all folds), write RUN atomically, return the run summary (metrics.json content).

    A config without a normalization trains a new model with ``inputs.DEFAULT_NORMALIZATION``; the
    resolved name is what run.json, metrics.json and the checkpoints record.
    """
    config = config or TrainConfig()
    if config.normalization is None:
        config = replace(config, normalization=DEFAULT_NORMALIZATION)
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    cache = Cache(cache_dir)
    model_input = _check_cache(cache, config)
    labels = list(cache.labels)
    by_source = _labels_by_source(cache)
    splits = []
    for fold in range(config.folds):
        try:
            splits.append(fold_split(by_source, fold, config.seed))
        except ValueError as exc:
            raise TrainError(f"{cache.root}: {exc}") from exc
    spec = RunSpec(
        cache_manifest_sha256=_sha256_text((cache.root / "manifest.json").read_text()),
        config=config.to_dict(),
        labels=labels,
        extra=dict(provenance or {}),
    )
    factory = model_factory or (lambda names: BBNN(n_classes=len(names)))
    with distributed(config.device) as dist:
        error = None
        if dist.main:
            try:
                _open_partial(out, partial, spec)
            except TrainError as exc:
                error = str(exc)
        error = dist.broadcast(error)  # every rank stops, instead of waiting for rank 0 forever
        if error:
            raise TrainError(error)
        with _live_log(partial if dist.main else None):
            if dist.main:
                for warning in thin_split_warnings(splits[0], by_source, config.folds):
                    log.warning("%s", warning)
            return _run_folds(cache, out, partial, splits, labels, config, model_input, spec, factory, provenance or {}, dist, progress)


def _run_folds(cache: Cache, out: Path, partial: Path, splits: list[Split], labels: list[str], config: TrainConfig, model_input: ModelInput,
               spec: RunSpec, factory: ModelFactory, provenance: dict[str, Any], dist: Dist, progress: Progress) -> dict[str, Any]:
    """Train every fold not finished yet, then assemble RUN (rank 0) and share its summary."""
    folds = []
    for fold, split in enumerate(splits):
        folder = partial / f"fold-{fold:02d}" if config.folds > 1 else partial
        done = dist.broadcast(_load_fold_result(folder) if dist.main else None)
        if done is not None:
            log.info("fold %d already finished in %s", fold, folder)
            folds.append(done)
            continue
        torch.manual_seed(config.seed + fold)
        model = factory(labels)
        trainer = FoldTrainer(cache, split, labels, config, model_input, model, fold, folder, dist, progress)
        trainer.model_id = out.name if config.folds == 1 else f"{out.name}-fold{fold:02d}"
        state = trainer.run()
        if dist.main:
            folds.append(_finish_fold(trainer, state, spec, provenance))
        dist.barrier()
    summary = None
    if dist.main:
        summary = _finish_run(out, partial, folds, spec, model_input.window_frames)
    dist.barrier()
    return dist.broadcast(summary)


@contextlib.contextmanager
def _live_log(folder: Path | None) -> Iterator[None]:
    """On rank 0, the trainer's INFO lines (one per epoch: loss, accuracy, time, ETA) reach the terminal
    and ``RUN.partial/train.log`` (kept in RUN), so a long run can be followed with ``tail -f`` and read later."""
    if folder is None:
        yield
        return
    logger = logging.getLogger("trainer")
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    handler = logging.FileHandler(folder / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(level)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _open_partial(out: Path, partial: Path, spec: RunSpec) -> None:
    """Refuse to overwrite a finished run; resume a matching interrupted one; start a new one."""
    if out.exists():
        raise TrainError(f"{out} already exists (a finished run); choose another --out or remove it")
    spec_path = partial / "run.json"
    if partial.exists():
        try:
            old = _from_before_normalization(json.loads(spec_path.read_text()))
        except (OSError, json.JSONDecodeError):
            old = None
        if old != json.loads(json.dumps(asdict(spec))):
            diff = sorted(k for k in asdict(spec) if old is None or old.get(k) != asdict(spec)[k])
            raise TrainError(
                f"{partial} holds an interrupted run with other settings (differs in: {', '.join(diff) or 'run.json unreadable'}); "
                f"rerun with the same options to resume it, or remove {partial} to start over"
            )
        log.warning("resuming the interrupted run in %s", partial)
        return
    partial.mkdir(parents=True)
    _write_json(spec_path, asdict(spec))


def _from_before_normalization(spec: Any) -> Any:
    """A run.json written before runs recorded their normalization was a seed run: it still resumes."""
    if isinstance(spec, dict) and isinstance(spec.get("config"), dict):
        spec["config"].setdefault("normalization", SEED)
    return spec


def _load_fold_result(folder: Path) -> dict[str, Any] | None:
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _finish_fold(trainer: FoldTrainer, state: FoldState, spec: RunSpec, provenance: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the best epoch on train/val/test and write the fold's checkpoint, metrics and figures."""
    cache, split, folder = trainer.cache, trainer.split, trainer.folder
    originals = {cache.entries[i].path: i for i in cache.originals()}
    reports = {name: trainer.evaluate([originals[p] for p in getattr(split, name)]) for name in ("train", "val", "test")}
    config = trainer.cfg
    info = trainer.model_info({
        **provenance,
        "trainer": provenance.get("trainer", "genre-trainer train"),
        "cache": str(cache.root),
        "seed": config.seed,
        "fold": trainer.fold,
        "best_epoch": state.best_epoch,
        "test_accuracy": reports["test"]["accuracy"],
    })
    save_checkpoint(folder / "model.pt", trainer.model, info, extra={"val_loss": state.best_loss})
    metrics = {
        "fold": trainer.fold,
        "seed": config.seed,
        "config": spec.config,
        "labels": trainer.labels,
        "window_frames": trainer.window,
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        **{name: reports[name] for name in ("train", "val", "test")},
        "split": {"train": list(split.train), "val": list(split.val), "test": list(split.test)},
        "history": state.history,
        "versions": _versions(),
        "extra": spec.extra,
    }
    plot_curves(state.history, folder / "curves.png", f"fold {trainer.fold}")
    plot_confusion(reports["test"]["confusion"], trainer.labels, folder / "confusion.png", f"test, fold {trainer.fold}: accuracy {reports['test']['accuracy']:.3f}")
    trainer.resume_path.unlink(missing_ok=True)
    (folder / BEST_SO_FAR).unlink(missing_ok=True)  # an earlier interruption's: model.pt supersedes it
    _write_json(folder / "metrics.json", metrics)  # last: its presence marks the fold finished
    log.info("fold %d: test accuracy %.3f (best epoch %d)", trainer.fold, reports["test"]["accuracy"], state.best_epoch)
    return metrics


def _finish_run(out: Path, partial: Path, folds: list[dict[str, Any]], spec: RunSpec, window: int) -> dict[str, Any]:
    """Single split: the fold's files are the run. Several folds: mean/std like the paper, summed confusion."""
    if len(folds) == 1:
        summary = folds[0]
    else:
        acc = np.array([f["test"]["accuracy"] for f in folds])
        best = min(range(len(folds)), key=lambda k: folds[k]["val"]["loss"])
        confusion = np.sum([f["test"]["confusion"] for f in folds], axis=0)
        summary = {
            "folds": len(folds),
            "test_accuracy_mean": float(acc.mean()),
            "test_accuracy_std": float(acc.std()),
            "test_accuracy_per_fold": acc.tolist(),
            "val_accuracy_per_fold": [f["val"]["accuracy"] for f in folds],
            "model_fold": best,
            "test_confusion_sum": confusion.tolist(),
            "labels": spec.labels,
            "window_frames": window,
            "config": spec.config,
            "versions": _versions(),
        }
        shutil.copyfile(partial / f"fold-{best:02d}" / "model.pt", partial / "model.pt")
        plot_confusion(confusion, spec.labels, partial / "confusion.png", f"test, {len(folds)} folds: accuracy {acc.mean():.3f} +/- {acc.std():.3f}")
        _write_json(partial / "metrics.json", summary)
        log.info("%d folds: test accuracy %.3f +/- %.3f", len(folds), acc.mean(), acc.std())
    (partial / "run.json").unlink(missing_ok=True)
    os.replace(partial, out)
    return summary
