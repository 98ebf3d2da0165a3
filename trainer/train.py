"""The BBNN training recipe: the paper's defaults, resumable, deterministic, and distributed under torchrun.

Recipe (Liu et al. / the seed): Adam lr 0.01, batch 8, 100 epochs,
ReduceLROnPlateau(factor 0.5, patience 3) and early stopping, both on the
validation loss (Keras' defaults, which the seed used), a stratified 8/1/1 split
with a seed, SpecAugment on the fly. The best epoch by validation loss is kept.

Results appear only complete: everything is built in ``RUN.partial`` and renamed
to ``RUN`` at the end. ``RUN.partial`` also holds the resume state written after
every epoch, so rerunning the same command after a crash continues from the last
finished epoch; randomness is derived from (seed, fold, epoch, batch), never from
a global generator, so the resumed run is bit-identical to an uninterrupted one on
the same CPU and thread count.

Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
DistributedDataParallel (NCCL on GPUs, gloo on CPU), every epoch's batches are
dealt across ranks keeping the global batch size, rank 0 validates and writes,
and its decisions (learning rate, early stop) are broadcast so ranks never diverge.
On a GPU the forward pass runs under autocast (float16 with a gradient scaler).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from genre_stream import __version__ as genre_stream_version
from genre_stream.common.fsutil import atomic_path
from .model import BBNN, torch_predictor
from genre_stream.model.info import ModelInfo

from .augment import SpecAugmentConfig, spec_augment
from .checkpoint import save_checkpoint
from .data import Cache, DataError, check_labels
from .evaluate import track_probabilities
from .metrics import classification_report
from .plots import plot_confusion, plot_curves
from .split import PARTS, Split, fold_split, thin_split_warnings

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[Iterable[T], str], contextlib.AbstractContextManager[Iterable[T]]]
ModelFactory = Callable[[list[str]], nn.Module]


def no_progress(items: Iterable[T], label: str) -> contextlib.AbstractContextManager[Iterable[T]]:
    return contextlib.nullcontext(items)


class TrainError(RuntimeError):
    """A run that cannot start or continue; the message says what to change."""


BEST_SO_FAR = "best-so-far.pt"
LOG_FILE = "train.log"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM turned into it) during training; ``best`` is the checkpoint of the best epoch so far."""

    def __init__(self, best: Path | None, state: FoldState) -> None:
        super().__init__()
        self.best, self.state = best, state


@dataclass
class TrainConfig:
    """The recipe; every field is recorded in metrics.json and must match to resume a run."""

    epochs: int = 100
    batch_size: int = 8
    lr: float = 0.01
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    early_stop_patience: int = 10
    accuracy_patience: int | None = None  # also stop after this many epochs without a better val accuracy (None: off)
    seed: int = 0
    folds: int = 1
    window_frames: int | None = None  # None: the cache's window
    augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    device: str = "auto"
    amp: bool = True
    eval_hop_seconds: float = 10.0
    bn_batches: int = 64  # batches of training windows used to re-estimate batch-norm statistics

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- distributed helpers


@dataclass
class Dist:
    """Where this process sits in a torchrun job (world 1 when run plainly)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: T) -> T:
        """Rank 0's value of ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def _pick_device(name: str, local_rank: int) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise TrainError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("device 'cuda' asked for, but PyTorch sees no CUDA GPU")
    if name != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@contextlib.contextmanager
def distributed(device: str) -> Iterator[Dist]:
    """Join the torchrun process group when launched by torchrun; a plain one-process context otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world <= 1:
        yield Dist(0, 1, dev)
        return
    backend = "nccl" if dev.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend)
    try:
        d = Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), dev)
        log.info("rank %d of %d on %s (%s)", d.rank, d.world, dev, backend)
        yield d
        # Leave together: rank 0 still writes RUN after the last collective, and a peer that tore
        # gloo down meanwhile once made rank 0 abort at exit ("terminate called without an active exception").
        d.barrier()
    finally:
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------- batches


def epoch_order(indices: list[int], seed: int, fold: int, epoch: int, dist: Dist) -> list[int]:
    """This rank's share of the epoch's shuffled sample order (equal length on every rank)."""
    rng = np.random.default_rng([seed, fold, epoch])
    order = [indices[i] for i in rng.permutation(len(indices))]
    usable = len(order) - len(order) % dist.world
    return order[dist.rank : usable : dist.world]


def make_batch(cache: Cache, indices: list[int], window: int, augment: SpecAugmentConfig | None, rng: np.random.Generator) -> np.ndarray:
    """Random crops of ``window`` frames, normalised on read, SpecAugmented when asked."""
    out = np.empty((len(indices), window, cache.frontend.n_mels), dtype=np.float32)
    for k, idx in enumerate(indices):
        start = int(rng.integers(0, cache.entries[idx].frames - window + 1))
        w = cache.window(idx, start, window)
        out[k] = spec_augment(w, augment, rng) if augment is not None and augment.enabled else w
    return out


def set_train_mode(model: nn.Module) -> None:
    """Train mode, except batch norms whose parameters are frozen: their statistics stay as loaded."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
            m.eval()


def _trainable_batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and m.weight.requires_grad]


def recalibrate_batch_norm(model: nn.Module, batches: Iterable[np.ndarray], device: torch.device) -> None:
    """Replace the running statistics of trainable batch norms by exact averages over ``batches``.

    The running averages lag behind weights that move fast (lr 0.01): on a small data
    set they never catch up and eval-mode predictions collapse onto one class while
    training accuracy is perfect. Re-estimating them with the final weights before
    every validation (un-augmented windows, cumulative average) removes that lag.
    """
    norms = _trainable_batch_norms(model)
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    set_train_mode(model)
    with torch.no_grad():
        for x in batches:
            model(torch.from_numpy(x).to(device))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


# ---------------------------------------------------------------- one fold


@dataclass
class FoldState:
    """Everything needed to continue a fold after its last finished epoch."""

    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    best_accuracy: float = -1.0
    accuracy_bad_epochs: int = 0


class FoldTrainer:
    """Trains one fold of a run; rank 0 owns the fold folder."""

    def __init__(self, cache: Cache, split: Split, labels: list[str], config: TrainConfig, window: int, model: nn.Module, fold: int, folder: Path, dist: Dist, progress: Progress) -> None:
        self.cache, self.split, self.labels, self.cfg = cache, split, labels, config
        self.window, self.fold, self.folder, self.dist, self.progress = window, fold, folder, dist, progress
        self.model = model.to(dist.device)
        self.model_id = folder.name
        self.label_index = {label: i for i, label in enumerate(labels)}
        copies = cache.copies_of()
        self.train_idx = sorted(i for p in split.train for i in copies[p])
        originals = {cache.entries[i].path: i for i in cache.originals()}
        self.val_idx = [originals[p] for p in split.val]
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise TrainError("no trainable parameters (everything frozen)")
        self.optimizer = torch.optim.Adam(params, lr=config.lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience)
        self.amp = config.amp and dist.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.net: nn.Module = self.model
        if dist.world > 1:
            ids = [dist.device.index] if dist.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.per_rank_batch = max(1, config.batch_size // dist.world)
        if config.batch_size % dist.world:
            log.warning("batch size %d is not a multiple of %d processes; using %d per process", config.batch_size, dist.world, self.per_rank_batch)

    @property
    def resume_path(self) -> Path:
        return self.folder / "resume.pt"

    def _targets(self, indices: list[int]) -> np.ndarray:
        return np.array([self.label_index[self.cache.entries[i].label] for i in indices], dtype=int)

    def save_state(self, state: FoldState) -> None:
        payload = {
            "fold_state": {k: v for k, v in asdict(state).items() if k != "best_state"},
            "best_state": state.best_state,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        with atomic_path(self.resume_path) as tmp:
            torch.save(payload, tmp)

    def load_state(self) -> FoldState:
        """Rank 0 reads the resume file; every rank gets its content (no shared filesystem needed)."""
        payload = None
        if self.dist.main and self.resume_path.is_file():
            payload = torch.load(self.resume_path, map_location="cpu", weights_only=True)
        payload = self.dist.broadcast(payload)
        if payload is None:
            return FoldState()
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        state = FoldState(**payload["fold_state"], best_state=payload["best_state"])
        log.info("fold %d: resuming after epoch %d", self.fold, state.epoch)
        return state

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        """One pass over the training clips; returns (mean loss, accuracy) over all ranks."""
        set_train_mode(self.net)
        order = epoch_order(self.train_idx, self.cfg.seed, self.fold, epoch, self.dist)
        batches = [order[i : i + self.per_rank_batch] for i in range(0, len(order), self.per_rank_batch)]
        loss_sum = correct = count = 0.0
        loss_fn = nn.CrossEntropyLoss()
        augment = self.cfg.augment if self.cfg.augment.enabled else None
        with self.progress(list(enumerate(batches)), f"fold {self.fold} epoch {epoch}/{self.cfg.epochs}") as bar:
            for b, batch in bar:
                rng = np.random.default_rng([self.cfg.seed, self.fold, epoch, b, self.dist.rank])
                x = torch.from_numpy(make_batch(self.cache, batch, self.window, augment, rng)).to(self.dist.device)
                y = torch.from_numpy(self._targets(batch)).to(self.dist.device)
                self.optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=self.dist.device.type, dtype=torch.float16, enabled=self.amp):
                    logits, _ = self.net(x)
                    loss = loss_fn(logits.float(), y)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                loss_sum += float(loss.detach()) * len(batch)
                correct += float((logits.argmax(1) == y).sum())
                count += len(batch)
        loss_sum, correct, count = self.dist.sum([loss_sum, correct, count])
        return loss_sum / max(count, 1), correct / max(count, 1)

    def recalibrate(self, epoch: int) -> None:
        originals = [i for i in self.train_idx if self.cache.entries[i].pitch == 0]
        rng = np.random.default_rng([self.cfg.seed, self.fold, epoch, 1 << 20])
        order = [originals[i] for i in rng.permutation(len(originals))]
        size = self.cfg.batch_size
        chunks = [order[i : i + size] for i in range(0, len(order), size)][: self.cfg.bn_batches]
        recalibrate_batch_norm(self.model, (make_batch(self.cache, c, self.window, None, rng) for c in chunks if len(c) > 1), self.dist.device)

    def evaluate(self, indices: list[int]) -> dict[str, Any]:
        probs = track_probabilities(self.cache, indices, self.window, torch_predictor(self.model, self.dist.device), self.cfg.eval_hop_seconds)
        return classification_report(self._targets(indices), probs, self.labels)

    def run(self) -> FoldState:
        state = self.load_state()
        try:
            return self._epochs(state)
        except KeyboardInterrupt:
            if self.dist.main and state.best_state is not None:
                raise Interrupted(self.save_best_so_far(state), state) from None
            raise Interrupted(None, state) from None

    def save_best_so_far(self, state: FoldState) -> Path:
        """The best finished epoch as a usable checkpoint, so an interrupted run still leaves a model."""
        assert state.best_state is not None
        model = copy.deepcopy(self.model).cpu()
        model.load_state_dict(state.best_state)
        info = ModelInfo(labels=self.labels, frontend=replace(self.cache.frontend, window_frames=self.window), model_id=self.model_id,
                         provenance={"trainer": "interrupted run", "fold": self.fold, "best_epoch": state.best_epoch})
        path = self.folder / BEST_SO_FAR
        save_checkpoint(path, model, info, extra={"val_loss": state.best_loss})
        return path

    def _epochs(self, state: FoldState) -> FoldState:
        cfg = self.cfg
        started, first = time.monotonic(), state.epoch
        while state.epoch < cfg.epochs and not state.stopped_early:
            epoch = state.epoch + 1
            train_loss, train_acc = self.train_epoch(epoch)
            verdict = None
            if self.dist.main:
                self.recalibrate(epoch)
                val = self.evaluate(self.val_idx)
                verdict = (val["loss"], val["accuracy"])
            val_loss, val_acc = self.dist.broadcast(verdict)
            self.scheduler.step(val_loss)
            row = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss, "val_accuracy": val_acc, "lr": self.optimizer.param_groups[0]["lr"]}
            state.history.append(row)
            if val_loss < state.best_loss:
                state.best_loss, state.best_epoch, state.bad_epochs = val_loss, epoch, 0
                state.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
            else:
                state.bad_epochs += 1
            if val_acc > state.best_accuracy:
                state.best_accuracy, state.accuracy_bad_epochs = val_acc, 0
            else:
                state.accuracy_bad_epochs += 1
            why = stop_reason(state, cfg)
            state.stopped_early = why is not None
            state.epoch = epoch
            if self.dist.main:
                # Saved before the epoch is announced: a Ctrl-C after its line resumes after it,
                # as the interrupt message then says (saving after the line lost the epoch once).
                self.save_state(state)
            per_epoch = (time.monotonic() - started) / (epoch - first)
            log.info(
                "fold %d epoch %d/%d: train loss %.4f acc %.3f | val loss %.4f acc %.3f | lr %.2g | %s/epoch, at most %s left%s",
                self.fold, epoch, cfg.epochs, train_loss, train_acc, val_loss, val_acc, row["lr"],
                clock(per_epoch), clock(per_epoch * (cfg.epochs - epoch)), " (best)" if state.best_epoch == epoch else "",
            )
            if why:
                log.info("fold %d: early stop after epoch %d (%s)", self.fold, epoch, why)
            self.dist.barrier()
        if state.best_state is not None:
            self.model.load_state_dict(state.best_state)
        return state


def stop_reason(state: FoldState, cfg: TrainConfig) -> str | None:
    """Why training should stop now (early stopping), or None to go on."""
    if state.bad_epochs >= cfg.early_stop_patience:
        return f"no val-loss improvement for {cfg.early_stop_patience} epochs"
    if cfg.accuracy_patience and state.accuracy_bad_epochs >= cfg.accuracy_patience:
        return f"val accuracy {state.best_accuracy:.3f} not beaten for {cfg.accuracy_patience} epochs"
    return None


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


# ---------------------------------------------------------------- a run


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


def _check_cache(cache: Cache, config: TrainConfig) -> int:
    """Validate data and options before anything is written; returns the training window."""
    window = config.window_frames or cache.window_frames
    if window > cache.window_frames:
        raise TrainError(f"--window-frames {window} is longer than the cache's {cache.window_frames}; prepare the cache with --window-frames {window}")
    if window < 16:
        raise TrainError(f"--window-frames {window} is too short for BBNN (needs >= 16 frames)")
    if config.folds < 1 or config.folds > PARTS:
        raise TrainError(f"--folds must be between 1 and {PARTS}, got {config.folds}")
    try:
        check_labels({label: sum(1 for i in cache.originals() if cache.entries[i].label == label) for label in cache.labels}, str(cache.root))
    except DataError as exc:
        raise TrainError(str(exc)) from exc
    return window


def train_run(
    cache_dir: str | Path,
    out: str | Path,
    config: TrainConfig | None = None,
    model_factory: ModelFactory | None = None,
    provenance: dict[str, Any] | None = None,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Train (all folds), write RUN atomically, return the run summary (metrics.json content)."""
    config = config or TrainConfig()
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    cache = Cache(cache_dir)
    window = _check_cache(cache, config)
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
            return _run_folds(cache, out, partial, splits, labels, config, window, spec, factory, provenance or {}, dist, progress)


def _run_folds(cache: Cache, out: Path, partial: Path, splits: list[Split], labels: list[str], config: TrainConfig, window: int,
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
        trainer = FoldTrainer(cache, split, labels, config, window, model, fold, folder, dist, progress)
        trainer.model_id = out.name if config.folds == 1 else f"{out.name}-fold{fold:02d}"
        state = trainer.run()
        if dist.main:
            folds.append(_finish_fold(trainer, state, spec, provenance))
        dist.barrier()
    summary = None
    if dist.main:
        summary = _finish_run(out, partial, folds, spec, window)
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
            old = json.loads(spec_path.read_text())
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
    info = ModelInfo(
        labels=trainer.labels,
        frontend=replace(cache.frontend, window_frames=trainer.window),
        model_id=trainer.model_id,
        provenance={
            **provenance,
            "trainer": provenance.get("trainer", "genre-trainer train"),
            "cache": str(cache.root),
            "seed": config.seed,
            "fold": trainer.fold,
            "best_epoch": state.best_epoch,
            "test_accuracy": reports["test"]["accuracy"],
        },
    )
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
