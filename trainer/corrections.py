"""Learning from corrections: fine-tune a model on a few user-labelled tracks without forgetting.

A user who says "this was jazz" labels a handful of tracks in the model's own
label set, so, unlike ``finetune`` (new labels, new decision layer), the base
model's decision layer is kept and the model is *nudged*:

* the trained parts are the last broadcast block and everything after it
  (``freeze="partial"``, as in ``finetune``), with a small learning rate;
* every batch norm keeps the base model's running statistics (the model runs in
  eval mode while it trains): a few dozen tracks cannot estimate them, and
  statistics that drift are the quickest way to lose what the model knew;
* each labelled track gives random crops of ``window_frames`` taken anywhere in
  the whole track, normalised as the base model's inputs are (``trainer.inputs``:
  a crop alone for the seed normalisation, the whole track for the running one),
  SpecAugmented (``trainer.augment``) when asked;
* forgetting can be held back by distillation (``replay_batch``): each step also shows the student
  SpecAugmented crops of *unlabelled* library tracks and pulls its (temperature
  softened) prediction towards the frozen base model's prediction of the clean
  crop. The library is the user's own music, so "keep answering like before" is
  asked exactly where the corrections must not leak.

SpecAugment and distillation are off by default because, measured by
cross-validation on real music (docs/MODEL_CARD.md), every short run with them
lost held-out accuracy, while the plain recipe neither gained nor lost.

Crops and augmentation come from ``numpy.random.default_rng([seed, step])`` (the
network itself draws no random numbers): the same inputs give the same model (on
CPU, same thread count). ``scripts/measure_corrections.py`` measures what this buys.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from genre_stream.audio.frontend import MelFrontend
from genre_stream.audio.normalization import SEED
from genre_stream.common.fsutil import sha256_file
from genre_stream.model.calibration import Calibration
from genre_stream.model.info import ModelInfo

from .augment import SpecAugmentConfig, spec_augment
from .checkpoint import load_checkpoint, save_checkpoint
from .data import DataError, decode_clip
from .export import to_onnx_model, torch_probabilities
from .onnx_meta import save_atomic
from .finetune import FREEZE, frozen_modules, resolve_checkpoint
from .inputs import ModelInput, TrackInputs
from .model import BBNN

log = logging.getLogger(__name__)

StepCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class CorrectionConfig:
    """How the corrections are learnt; the defaults are the only recipe in docs/MODEL_CARD.md that did no harm."""

    steps: int = 60
    batch_size: int = 8  # labelled crops per step
    replay_batch: int = 0  # unlabelled (distilled) crops per step; 0 turns distillation off
    distill_weight: float = 1.0
    distill_temperature: float = 2.0
    lr: float = 3e-4
    window_frames: int = 128
    freeze: str = "partial"
    augment: SpecAugmentConfig = field(default_factory=lambda: SpecAugmentConfig(0, 0, 0))  # measured: it costs accuracy
    seed: int = 0

    def __post_init__(self) -> None:
        if self.freeze not in FREEZE:
            raise ValueError(f"freeze must be one of {', '.join(FREEZE)}, got {self.freeze!r}")
        if self.steps < 1 or self.batch_size < 1 or self.replay_batch < 0 or self.window_frames < 16:
            raise ValueError("steps and batch_size must be >= 1, replay_batch >= 0, window_frames >= 16")
        if not self.lr > 0 or self.distill_weight < 0 or not self.distill_temperature > 0:
            raise ValueError("lr and distill_temperature must be > 0, distill_weight >= 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LabelledTrack:
    """Mel power frames (T, n_mels) of a whole track and the index of its label in the model's labels."""

    power: np.ndarray
    label: int


def looped(power: np.ndarray, frames: int) -> np.ndarray:
    """A track of at least ``frames`` frames: a shorter one repeated, like classify loops a short clip."""
    return np.tile(power, (-(-frames // len(power)), 1)) if len(power) < frames else power


def _augment(windows: list[np.ndarray], config: SpecAugmentConfig, rng: np.random.Generator) -> np.ndarray:
    return np.stack([spec_augment(w, config, rng) if config.enabled else w for w in windows]).astype(np.float32)


def learn_corrections(
    base: BBNN,
    labelled: Sequence[LabelledTrack],
    unlabelled: Sequence[np.ndarray] = (),
    config: CorrectionConfig | None = None,
    top_db: float = 80.0,
    on_step: StepCallback | None = None,
    model_input: ModelInput | None = None,
) -> BBNN:
    """A copy of ``base`` fine-tuned on ``labelled`` and distilled from ``base`` on ``unlabelled`` power frames.

    ``model_input`` is the base model's input rule (``ModelInput.of(info)``); a caller that holds only
    weights leaves it out and gets the seed normalisation with ``top_db``.
    """
    config = config or CorrectionConfig()
    model_input = model_input or ModelInput(SEED, config.window_frames, top_db)
    if not labelled:
        raise ValueError("no labelled tracks to learn from")
    n_classes = base.n_classes
    bad = [t.label for t in labelled if not 0 <= t.label < n_classes]
    if bad:
        raise ValueError(f"label indices {bad} outside the model's {n_classes} labels")
    teacher = base.eval()
    student = copy.deepcopy(base)
    for module in frozen_modules(student, config.freeze):
        for p in module.parameters():
            p.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    log.info("learning %d corrections (+%d unlabelled tracks for distillation): %d of %d parameters trained",
             len(labelled), len(unlabelled), sum(p.numel() for p in params), sum(p.numel() for p in student.parameters()))
    optimiser = torch.optim.Adam(params, lr=config.lr)
    student.eval()  # batch norms keep the base model's statistics (see the module docstring)
    replay = config.replay_batch if unlabelled and config.distill_weight > 0 else 0
    t = config.distill_temperature
    # labelled tracks are numbered 0.., unlabelled ones after them; whole tracks, so the running normalisation sees them all
    tracks = [looped(p, config.window_frames) for p in [*(track.power for track in labelled), *unlabelled]]
    inputs = TrackInputs(model_input, lambda i, start, length: tracks[i][start : None if length is None else start + length])

    def crop(i: int, rng: np.random.Generator) -> np.ndarray:
        """The model input of ``window_frames`` frames from anywhere in track ``i``."""
        start = int(rng.integers(0, len(tracks[i]) - config.window_frames + 1))
        return inputs.window(i, start, config.window_frames)

    for step in range(config.steps):
        rng = np.random.default_rng([config.seed, step])
        picks = rng.integers(0, len(labelled), size=config.batch_size)
        x = _augment([crop(int(i), rng) for i in picks], config.augment, rng)
        y = torch.tensor([labelled[i].label for i in picks])
        logits, _ = student(torch.from_numpy(x))
        loss = F.cross_entropy(logits, y)
        if replay:
            clean = [crop(len(labelled) + int(i), rng) for i in rng.integers(0, len(unlabelled), size=replay)]
            with torch.no_grad():
                target = F.softmax(teacher(torch.from_numpy(np.stack(clean)))[0] / t, dim=-1)
            student_logits, _ = student(torch.from_numpy(_augment(clean, config.augment, rng)))
            distill = F.kl_div(F.log_softmax(student_logits / t, dim=-1), target, reduction="batchmean") * t * t
            loss = loss + config.distill_weight * distill
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if on_step is not None:
            on_step(step, loss.item())
    student.eval()
    for p in student.parameters():
        p.requires_grad_(True)
    return student



# ---------------------------------------------------------------- from a library database


@dataclass
class LibraryData:
    """What a library database gives the trainer: labelled tracks, unlabelled ones, and what was skipped."""

    labelled: list[LabelledTrack]
    labelled_paths: list[str]
    unlabelled: list[np.ndarray]
    skipped: list[dict[str, str]]  # {"path", "reason"}: labelled files that vanished or could not be decoded


def read_library(db_path: Path, labels: list[str], frontend: MelFrontend, max_unlabelled: int, seed: int) -> LibraryData:
    """Decode the library's labelled tracks and up to ``max_unlabelled`` of its other tracks (whole tracks)."""
    from genre_stream.audio.decode import AudioError
    from genre_stream.library.db import LibraryDB
    from genre_stream.library.labels import user_labels

    if not db_path.is_file():
        raise DataError(f"{db_path}: no library database; label tracks with `genre-stream library label PATH GENRE` first")
    with LibraryDB(db_path) as db:
        corrections = user_labels(db)
        indexed = sorted(db.stamps())
    unknown = sorted({c.genre for c in corrections} - set(labels))
    if unknown:
        raise DataError(f"{db_path}: labels {unknown} are not genres of the model ({', '.join(labels)})")
    data = LibraryData([], [], [], [])
    for c in corrections:
        try:
            power = decode_clip(Path(c.path), frontend)[0]
        except (AudioError, OSError) as exc:
            reason = "file vanished" if not Path(c.path).exists() else str(exc)
            data.skipped.append({"path": c.path, "reason": reason})
            log.warning("skipping labelled %s: %s", c.path, reason)
            continue
        data.labelled.append(LabelledTrack(power, labels.index(c.genre)))
        data.labelled_paths.append(c.path)
    if not data.labelled:
        raise DataError(f"{db_path}: no usable labelled tracks ({len(corrections)} labels, {len(data.skipped)} skipped)")
    labelled = {c.path for c in corrections}
    others = [p for p in indexed if p not in labelled and Path(p).is_file()]
    rng = np.random.default_rng(seed)
    for i in sorted(rng.permutation(len(others))[:max_unlabelled]):
        try:
            data.unlabelled.append(decode_clip(Path(others[i]), frontend)[0])
        except (AudioError, OSError) as exc:
            log.info("not distilling on %s: %s", others[i], exc)
    return data


def base_calibration(checkpoint: str | Path, info: ModelInfo) -> Calibration | None:
    """The calibration the fine-tuned model keeps: the checkpoint's own, or for ``default`` the bundled export's."""
    if info.calibration is not None or str(checkpoint) != "default":
        return info.calibration
    from genre_stream.model.choice import open_engine

    return open_engine(None, device="cpu", threads=1).info.calibration


def finetune_library(checkpoint: str | Path, db_path: str | Path, out: str | Path, config: CorrectionConfig | None = None,
                     max_unlabelled: int = 64, on_step: StepCallback | None = None) -> dict[str, Any]:
    """Learn the corrections of a library database; write OUT/model.pt, OUT/model.onnx (fp32) and OUT/report.json.

    The model keeps the base model's labels and calibration (temperature and
    "uncertain" thresholds): a user's few dozen labels are too few to hold some
    out and re-fit a temperature, and cross-validation on real music showed the
    base temperature still fits the fine-tuned model (docs/MODEL_CARD.md). OUT is
    built in OUT.partial and renamed when complete; an existing OUT is refused.
    """
    config = config or CorrectionConfig()
    out, db_path = Path(out), Path(db_path)
    if out.exists():
        raise DataError(f"{out}: already exists; choose another --out")
    path = resolve_checkpoint(checkpoint)
    base, info, _ = load_checkpoint(path)
    data = read_library(db_path, info.labels, MelFrontend(info.frontend), max_unlabelled if config.replay_batch else 0, config.seed)
    targets = np.array([t.label for t in data.labelled])
    before = _track_accuracy(base, data.labelled, targets, info)
    model = learn_corrections(base, data.labelled, data.unlabelled, config, info.frontend.top_db, on_step, ModelInput.of(info))
    after = _track_accuracy(model, data.labelled, targets, info)
    tuned = replace(info, model_id=f"{info.model_id or path.stem}+corrections", calibration=base_calibration(checkpoint, info),
                    provenance={"trainer": "genre-trainer finetune --library", "base_model": info.model_id or path.stem,
                                "base_sha256": sha256_file(path), "labelled_tracks": len(data.labelled),
                                "unlabelled_tracks": len(data.unlabelled), "config": config.to_dict()})
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_checkpoint(partial / "model.pt", model, tuned)
    save_atomic(to_onnx_model(model, tuned), partial / "model.onnx")
    report = {"model": str(out / "model.onnx"), "labelled": data.labelled_paths, "skipped": data.skipped,
              "unlabelled_tracks": len(data.unlabelled), "labelled_accuracy_before": before, "labelled_accuracy_after": after,
              "calibration": "kept from the base model" if tuned.calibration else "none (the base model has none)",
              "config": config.to_dict()}
    (partial / "report.json").write_text(json.dumps(report, indent=1, default=str))
    partial.rename(out)
    return report


def _track_accuracy(model: BBNN, tracks: Sequence[LabelledTrack], targets: np.ndarray, info: ModelInfo) -> float:
    """Accuracy on whole tracks, each judged on its first 30 s window (in-sample: a sanity figure, not a measurement)."""
    model_input = ModelInput.of(info)
    windows = np.stack([model_input.window(looped(t.power, model_input.window_frames)[: model_input.window_frames]) for t in tracks])
    return float((torch_probabilities(model, windows).argmax(axis=1) == targets).mean())
