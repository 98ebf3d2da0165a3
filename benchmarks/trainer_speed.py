"""Trainer throughput: training from the mel cache vs decoding + mel every epoch; prepare speed.

Writes benchmarks/results/trainer.json. Both loaders feed the same model, optimiser
and SpecAugment with the same batch size in the same process, so their ratio is a
fair measure of what the cache saves; the loaders alone (no model step) are timed
too, because on a CPU the model step dominates at the paper's 647-frame window.
The data are synthetic 30 s clips at 22050 Hz (GTZAN's length and rate).

    PYTHONPATH=. python benchmarks/trainer_speed.py [--clips 8] [--batches 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import machine_info

from genre_stream.audio.frontend import FrontendConfig, MelFrontend, normalize_window
from genre_stream.audio.normalization import SEED
from genre_stream.common.fsutil import atomic_path
from trainer.augment import SpecAugmentConfig, spec_augment
from trainer.data import Cache, PrepareConfig, decode_clip, prepare
from trainer.inputs import ModelInput
from trainer.model import BBNN
from trainer.synthset import make_dataset
from trainer.train import make_batch

RESULTS = Path(__file__).parent / "results" / "trainer.json"
Loader = Callable[[list[int], np.random.Generator], np.ndarray]


def decoding_loader(cache: Cache, window: int, augment: SpecAugmentConfig) -> Loader:
    """What training without a cache does: decode the file and compute mel for every sample."""
    frontend = MelFrontend(cache.frontend)

    def load(indices: list[int], rng: np.random.Generator) -> np.ndarray:
        out = []
        for idx in indices:
            power, _, _ = decode_clip(Path(cache.entries[idx].path), frontend)
            start = int(rng.integers(0, power.shape[0] - window + 1))
            out.append(spec_augment(normalize_window(power[start : start + window]), augment, rng))
        return np.stack(out)

    return load


def cached_loader(cache: Cache, window: int, augment: SpecAugmentConfig) -> Loader:
    model_input = ModelInput(SEED, window, cache.frontend.top_db)  # the seed normalisation, as decoding_loader applies it
    return lambda indices, rng: make_batch(cache, indices, model_input, augment, rng)


def interleaved_rates(loaders: dict[str, Loader], n: int, batches: int, batch_size: int, train: bool) -> dict[str, float]:
    """Samples/s of each loader (+ a full training step of its own model when ``train``).

    Batches of the loaders alternate, so a load spike from other processes on this
    shared machine slows both sides alike instead of skewing the ratio. The first
    batch of each warms up allocators and file caches and is not timed.
    """
    rng = np.random.default_rng(0)
    loss_fn = torch.nn.CrossEntropyLoss()
    models = {name: BBNN(2) for name in loaders} if train else {}
    opts = {name: torch.optim.Adam(m.parameters(), lr=0.01) for name, m in models.items()}
    elapsed = dict.fromkeys(loaders, 0.0)
    for b in range(batches + 1):
        indices = [int(i) for i in rng.integers(0, n, batch_size)]
        for name, loader in loaders.items():
            t0 = time.perf_counter()
            x = torch.from_numpy(loader(indices, np.random.default_rng(b)))
            if train:
                models[name].train()
                logits, _ = models[name](x)
                loss = loss_fn(logits, torch.zeros(len(indices), dtype=torch.long))
                opts[name].zero_grad()
                loss.backward()
                opts[name].step()
            if b:
                elapsed[name] += time.perf_counter() - t0
    return {name: batches * batch_size / t for name, t in elapsed.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8, help="30 s clips per class (2 classes)")
    parser.add_argument("--batches", type=int, default=3, help="timed batches per measurement")
    parser.add_argument("--windows", default="647,128", help="training window lengths (frames) to measure")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result: dict = {
        "machine": machine_info(torch=torch.__version__, torch_threads=torch.get_num_threads()),
        "data": {"clips": 2 * args.clips, "seconds_per_clip": 30.0, "sample_rate": 22050},
        "batch_size": 8,
    }
    with tempfile.TemporaryDirectory() as tmp:
        data, cache_dir = Path(tmp) / "data", Path(tmp) / "cache"
        make_dataset(data, classes=2, clips=args.clips, seconds=30.0, seed=0)
        t0 = time.perf_counter()
        report = prepare(data, cache_dir, PrepareConfig(FrontendConfig()))
        prep_s = time.perf_counter() - t0
        result["prepare"] = {
            "seconds": prep_s,
            "audio_hours": report.audio_seconds / 3600,
            "audio_hours_per_minute": (report.audio_seconds / 3600) / (prep_s / 60),
        }
        t0 = time.perf_counter()
        again = prepare(data, cache_dir, PrepareConfig(FrontendConfig()))
        result["prepare"]["rerun_unchanged_seconds"] = time.perf_counter() - t0
        assert again.decoded == 0
        cache = Cache(cache_dir)
        n = len(cache.entries)
        augment = SpecAugmentConfig()
        result["windows"] = {}
        for window in (int(w) for w in args.windows.split(",")):
            row = {}
            loaders = {"cached": cached_loader(cache, window, augment), "decode_every_epoch": decoding_loader(cache, window, augment)}
            for name, rate in interleaved_rates(loaders, n, args.batches, 8, train=False).items():
                row[f"{name}_loader_samples_per_s"] = rate
            for name, rate in interleaved_rates(loaders, n, args.batches, 8, train=True).items():
                row[f"{name}_train_samples_per_s"] = rate
            row["train_speedup"] = row["cached_train_samples_per_s"] / row["decode_every_epoch_train_samples_per_s"]
            row["loader_speedup"] = row["cached_loader_samples_per_s"] / row["decode_every_epoch_loader_samples_per_s"]
            result["windows"][str(window)] = row
            print(window, json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp_out:
        tmp_out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
