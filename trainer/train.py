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
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from genre_stream.common.fsutil import atomic_path
from genre_stream.model.info import ModelInfo

from .augment import SpecAugmentConfig, spec_augment
from .checkpoint import save_checkpoint
from .data import Cache
from .distributed import Dist, TrainError
from .evaluate import track_probabilities
from .inputs import ModelInput
from .metrics import classification_report
from .model import torch_predictor
from .split import Split

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[Iterable[T], str], contextlib.AbstractContextManager[Iterable[T]]]
ModelFactory = Callable[[list[str]], nn.Module]


def no_progress(items: Iterable[T], label: str) -> contextlib.AbstractContextManager[Iterable[T]]:
    return contextlib.nullcontext(items)


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
    # The model's input normalisation (genre_stream.audio.normalization); None until the run resolves it:
    # inputs.DEFAULT_NORMALIZATION for a new model, the base model's when fine-tuning.
    normalization: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- batches


def epoch_order(indices: list[int], seed: int, fold: int, epoch: int, dist: Dist) -> list[int]:
    """This rank's share of the epoch's shuffled sample order (equal length on every rank)."""
    rng = np.random.default_rng([seed, fold, epoch])
    order = [indices[i] for i in rng.permutation(len(indices))]
    usable = len(order) - len(order) % dist.world
    return order[dist.rank : usable : dist.world]


def make_batch(cache: Cache, indices: list[int], model_input: ModelInput, augment: SpecAugmentConfig | None, rng: np.random.Generator) -> np.ndarray:
    """Random crops of the model's window, normalised on read as the runtime would, SpecAugmented when asked."""
    window = model_input.window_frames
    out = np.empty((len(indices), window, cache.frontend.n_mels), dtype=np.float32)
    for k, idx in enumerate(indices):
        start = int(rng.integers(0, cache.entries[idx].frames - window + 1))
        w = cache.window(idx, start, window, model_input)
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

    def __init__(self, cache: Cache, split: Split, labels: list[str], config: TrainConfig, model_input: ModelInput, model: nn.Module, fold: int,
                 folder: Path, dist: Dist, progress: Progress) -> None:
        self.cache, self.split, self.labels, self.cfg, self.model_input = cache, split, labels, config, model_input
        self.window, self.fold, self.folder, self.dist, self.progress = model_input.window_frames, fold, folder, dist, progress
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
                x = torch.from_numpy(make_batch(self.cache, batch, self.model_input, augment, rng)).to(self.dist.device)
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
        recalibrate_batch_norm(self.model, (make_batch(self.cache, c, self.model_input, None, rng) for c in chunks if len(c) > 1), self.dist.device)

    def evaluate(self, indices: list[int]) -> dict[str, Any]:
        probs = track_probabilities(self.cache, indices, self.model_input, torch_predictor(self.model, self.dist.device), self.cfg.eval_hop_seconds)
        return classification_report(self._targets(indices), probs, self.labels)

    def model_info(self, provenance: dict[str, Any]) -> ModelInfo:
        """What this fold's checkpoints say about the model: the runtime reads its window and normalisation from here."""
        return ModelInfo(labels=self.labels, frontend=replace(self.cache.frontend, window_frames=self.window),
                         normalization=self.model_input.normalization, model_id=self.model_id, provenance=provenance)

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
        info = self.model_info({"trainer": "interrupted run", "fold": self.fold, "best_epoch": state.best_epoch})
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
    seconds = round(float(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"
