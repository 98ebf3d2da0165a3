"""Experiment: fine-tune the bundled BBNN on real music with a window-independent normalisation.

Development tool, not part of the package. Everything it writes goes under ``.data/realmusic/``
(git-ignored); the clips come from ``../shared/audio`` (never committed).

Stages (run in order; each caches its output):

    python scripts/realmusic_experiment.py cache      # decode once, mel power frames + bundled fp32 answers
    .data/teacher-venv/bin/python scripts/realmusic_teacher.py   # YAMNet ten-genre scores (teacher venv)
    python scripts/realmusic_experiment.py cv --tag NAME [options]   # k-fold fine-tuning, held-out predictions
    python scripts/realmusic_experiment.py cv --tag zeroshot-fixed --zero-shot   # bundled weights, fixed norm
    python scripts/realmusic_experiment.py featcache   # frozen backbone (stem + 3 blocks) output, 6.7 GB
    python scripts/realmusic_experiment.py pool        # transition BN/ReLU/2x2 pool of it, 1.6 GB
    python scripts/realmusic_experiment.py cvfeat --tag head-f --balance 1 --w-true 0.7 --teacher-yamnet 0 \
        --train-all 0 --lr 0.01 --epochs 20        # best head-only recipe measured
    python scripts/realmusic_experiment.py cv --tag full-f0 --only-folds 0 --epochs 5 --crop 108 --batch 16 \
        --lr 3e-4 --w-true 0.7 --teacher-yamnet 0 --balance 1   # full fine-tune, one fold (~14 min here)
    python scripts/realmusic_experiment.py levels --per-group 2 --gains -20 0 20   # level sensitivity
    python scripts/realmusic_experiment.py report --tag NAME [--confusion]
    python scripts/realmusic_experiment.py manifest --tag NAME   # trainer/manifests/realmusic-dev.csv

Fixed-reference normalisation (no dependence on the window): db = 10*log10(max(power, 1e-10)),
x = clip((R - db) / 80, 0, 1), R a constant (0 = at or above R, 1 = 80 dB below it or quieter).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "audio"
OUT = REPO / ".data" / "realmusic"
CACHE = OUT / "cache.npz"
META = OUT / "clips.json"
TEACHER = OUT / "yamnet.json"
LABELS = ["blues", "reggae", "metal", "classical", "pop", "jazz", "disco", "hiphop", "rock", "country"]
BUNDLED_PT = REPO / "trainer" / "models" / "bbnn-gtzan-augmented-fold0.pt"
WINDOW = 647
HOP_FRAMES = 215  # classify's 10 s hop, in frames (seconds_to_frames(10.0))


def clip_list() -> list[dict]:
    clips = []
    with open(SHARED / "genre-dev" / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            clips.append({
                "id": "gd:" + r["path"], "path": str(SHARED / "genre-dev" / r["path"]), "label": r["label"],
                "set": "genre-dev-gtzan" if r["is_gtzan"] == "1" else "genre-dev-real",
                "source": f"{r['source_repo']}:{r['source_path']}", "commit": "", "confidence": r["label_confidence"],
            })
    with open(SHARED / "emotify-dev" / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            clips.append({
                "id": "emo:" + r["file"], "path": str(SHARED / "emotify-dev" / r["file"]), "label": r["label"],
                "set": "emotify-dev", "source": r["source_path"], "commit": r["commit"], "confidence": "collection",
            })
    return clips


# ---------------------------------------------------------------- cache
def cmd_cache(args) -> None:
    from genre_stream.audio.decode import iter_audio
    from genre_stream.model.choice import open_engine
    from genre_stream.audio.frontend import MelFrontend, loop_to_length
    from genre_stream.tracks.analysis import analyse_blocks

    OUT.mkdir(parents=True, exist_ok=True)
    fe = MelFrontend()
    c = fe.config
    engine = open_engine("fp32", threads=2)
    clips = clip_list()
    frames, meta = {}, []
    t0 = time.time()
    for i, clip in enumerate(clips):
        audio = np.concatenate(list(iter_audio(clip["path"], c.sample_rate)))
        # classify's own path, on the same decoded samples (analyse_file = iter_audio + analyse_blocks)
        res = analyse_blocks([audio], engine, fe)
        src = loop_to_length(audio, c.window_samples) if audio.size < c.window_samples else audio
        power = fe.power(src)
        if audio.size < c.window_samples:
            power = power[: c.window_frames]
        frames[str(i)] = power.astype(np.float32)
        rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
        meta.append({**clip, "idx": i, "n_samples": int(audio.size), "n_frames": int(power.shape[0]),
                     "rms_dbfs": 20 * math.log10(max(rms, 1e-10)),
                     "bundled_probs": [float(p) for p in res.probabilities], "bundled_windows": len(res.windows)})
        if i % 50 == 0:
            print(f"{i}/{len(clips)} {time.time() - t0:.0f}s", flush=True)
    np.savez(CACHE, **frames)
    META.write_text(json.dumps(meta, indent=1))
    print(f"cached {len(clips)} clips in {time.time() - t0:.0f}s -> {CACHE}")


def load_all():
    meta = json.loads(META.read_text())
    z = np.load(CACHE)
    frames = [z[str(m["idx"])] for m in meta]
    yam = json.loads(TEACHER.read_text()) if TEACHER.exists() else {}
    return meta, frames, yam


# ---------------------------------------------------------------- normalisation
def fixed_norm(power: np.ndarray, ref_db: float, gain_db: float = 0.0, top_db: float = 80.0) -> np.ndarray:
    db = 10.0 * np.log10(np.maximum(power, 1e-10)) + gain_db
    return np.clip((ref_db - db) / top_db, 0.0, 1.0).astype(np.float32)


def seed_norm(power: np.ndarray) -> np.ndarray:
    from genre_stream.audio.frontend import normalize_window
    return normalize_window(power)


def windows_of(power: np.ndarray) -> list[np.ndarray]:
    from genre_stream.tracks.analysis import window_starts
    return [power[s : s + WINDOW] for s in window_starts(power.shape[0], WINDOW, HOP_FRAMES)]


# ---------------------------------------------------------------- labels
def yamnet_dist(yam: dict, clip_id: str, power_exp: float = 1.0) -> np.ndarray | None:
    if clip_id not in yam:
        return None
    s = np.array([yam[clip_id]["genres"][g] for g in LABELS], dtype=np.float64) ** power_exp
    if not s.sum() > 0:  # YAMNet gave no genre any score (one emotify clip): no teacher for it
        return None
    return s / s.sum()


def soft_target(m: dict, yam: dict, args) -> np.ndarray | None:
    """Training target: w_true * one-hot + (1 - w_true) * mean(bundled, YAMNet); teacher only without a label."""
    teachers = []
    if args.teacher_bundled:
        teachers.append(np.array(m["bundled_probs"], dtype=np.float64))
    y = yamnet_dist(yam, m["id"], args.yamnet_power)
    if y is not None and args.teacher_yamnet:
        teachers.append(y)
    teach = np.mean(teachers, axis=0) if teachers else None
    if m["label"] in LABELS:
        onehot = np.eye(len(LABELS))[LABELS.index(m["label"])]
        if teach is None:
            return onehot
        return args.w_true * onehot + (1 - args.w_true) * teach
    # no GTZAN label (emotify electronic)
    if args.electronic == "drop":
        return None
    if args.electronic == "yamnet" and y is not None:
        return y
    return teach


# ---------------------------------------------------------------- folds
def make_folds(meta: list[dict], k: int, seed: int = 0) -> np.ndarray:
    """Stratified by (set, label); every clip gets a fold in 0..k-1."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(meta), dtype=int)
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(meta):
        groups.setdefault((m["set"], m["label"]), []).append(i)
    offset = 0
    for key in sorted(groups):
        idx = np.array(groups[key])
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            fold[i] = (j + offset) % k
        offset += len(idx)
    return fold


# ---------------------------------------------------------------- training
def predict_clip(model, power: np.ndarray, norm) -> np.ndarray:
    import torch
    ws = np.stack([norm(w) for w in windows_of(power)])
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(ws))
        return torch.softmax(logits, -1).mean(0).numpy()


def set_bn_eval(model) -> None:
    import torch.nn as nn
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.eval()


def train_fold(train_idx, frames, targets, ref_db, args, log, meta_sets=None, meta_labels=None) -> "torch.nn.Module":
    import torch
    from trainer.checkpoint import load_checkpoint

    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    model, _, _ = load_checkpoint(BUNDLED_PT)
    params = [p for n, p in model.named_parameters() if (not args.freeze_stem or not n.startswith("stem")) and args.train_all or n.startswith(("classifier", "head_norm", "transition"))]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.wd)
    n = len(train_idx)
    steps_per_epoch = max(1, n // args.batch)
    total_steps = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total_steps, pct_start=args.pct_start)
    crop = args.crop
    t0 = time.time()
    step = 0
    seeded = {i: seed_norm(frames[i]) for i in train_idx} if args.norm == "seed" else {}
    if args.freeze_stem:
        for prm in model.stem.parameters():
            prm.requires_grad_(False)
    if args.balance:  # each (set, label) group drawn equally often (as in cvfeat)
        grp = [(meta_sets[i], meta_labels[i]) for i in train_idx]
        cnt = {g: grp.count(g) for g in set(grp)}
        wts = np.array([1.0 / cnt[g] for g in grp]); wts /= wts.sum()
    for ep in range(args.epochs):
        order = rng.choice(train_idx, size=n, p=wts) if args.balance else rng.permutation(train_idx)
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * args.batch : (b + 1) * args.batch]
            xs, ys = [], []
            for i in idx:
                p = frames[i]
                s = rng.integers(0, p.shape[0] - crop + 1)
                if args.norm == "seed":  # the clip (one window) normalised as a whole, then cropped: level-invariant
                    x = seeded[i][s : s + crop].copy()
                else:
                    g = rng.uniform(-args.gain, args.gain)
                    x = fixed_norm(p[s : s + crop], ref_db, g)
                if args.specaug:
                    fill = x.mean()
                    for _ in range(2):
                        w = rng.integers(0, 17); f0 = rng.integers(0, 128 - w + 1); x[:, f0 : f0 + w] = fill
                        w = rng.integers(0, crop // 10 + 1); t = rng.integers(0, crop - w + 1); x[t : t + w] = fill
                xs.append(x)
                ys.append(targets[i])
            model.train()
            if not args.bn_train:
                set_bn_eval(model)
            logits, _ = model(torch.from_numpy(np.stack(xs)))
            y = torch.from_numpy(np.stack(ys)).float()
            loss = -(y * torch.log_softmax(logits, -1)).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
        log(f"  epoch {ep + 1}/{args.epochs} loss {np.mean(losses):.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    return model


def choose_ref_db(meta, frames) -> float:
    """R = the median over clips of each clip's loudest mel bin (dB), rounded: full-scale music near 0."""
    mx = [float(10 * np.log10(max(f.max(), 1e-10))) for f in frames]
    return float(np.round(np.median(mx)))


def open_run(tag: str):
    """A run's folder under ``.data/realmusic/runs`` and a ``log`` that prints and appends to its log.txt."""
    run = OUT / "runs" / tag
    run.mkdir(parents=True, exist_ok=True)
    logf = open(run / "log.txt", "a")

    def log(s: str) -> None:
        print(s, flush=True)
        logf.write(s + "\n")
        logf.flush()

    return run, log


def cmd_cv(args) -> None:
    import torch
    from trainer.checkpoint import load_checkpoint

    torch.set_num_threads(2)
    meta, frames, yam = load_all()
    ref_db = args.ref_db if args.ref_db is not None else choose_ref_db(meta, frames)
    run, log = open_run(args.tag)
    log(f"== {args.tag} {time.strftime('%H:%M:%S')} ref_db={ref_db} args={vars(args)}")
    targets = [soft_target(m, yam, args) for m in meta]
    folds = make_folds(meta, args.k, args.fold_seed)
    preds = np.full((len(meta), len(LABELS)), np.nan)
    norm = seed_norm if args.norm == "seed" else (lambda w: fixed_norm(w, ref_db))
    if args.zero_shot:  # bundled weights with the fixed normalisation, no training
        model, _, _ = load_checkpoint(BUNDLED_PT)
        for i in range(len(meta)):
            preds[i] = predict_clip(model, frames[i], norm)
    else:
        times = []
        for k in range(args.k):
            if args.only_folds and k not in args.only_folds:
                continue
            tr = np.array([i for i in range(len(meta)) if folds[i] != k and targets[i] is not None])
            te = [i for i in range(len(meta)) if folds[i] == k]
            log(f"fold {k}: train {len(tr)} clips, held out {len(te)}")
            t0 = time.time()
            model = train_fold(tr, frames, targets, ref_db, args, log,
                               [m["set"].replace("-gtzan", "").replace("-real", "") for m in meta], [m["label"] for m in meta])
            times.append(time.time() - t0)
            for i in te:
                preds[i] = predict_clip(model, frames[i], norm)
            log(f"fold {k} trained in {times[-1]:.0f}s")
            if args.save_models:
                torch.save(model.state_dict(), run / f"fold{k}.pt")
        log(f"train seconds per fold: {[round(t) for t in times]}")
    np.save(run / "preds.npy", preds)
    json.dump({"ref_db": ref_db, "folds": folds.tolist(), "args": vars(args)}, open(run / "run.json", "w"))
    report(meta, preds, yam, log)


# ---------------------------------------------------------------- report
def fmt(k, n):
    from trainer.metrics import wilson_interval

    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}]" if n else "-"


def summarise(meta, preds) -> dict:
    out = {}
    ok = lambda i: LABELS[int(np.argmax(preds[i]))] == meta[i]["label"]
    valid = [i for i in range(len(meta)) if not np.isnan(preds[i]).any()]
    for s in ["genre-dev-gtzan", "genre-dev-real"]:
        idx = [i for i in valid if meta[i]["set"] == s]
        out[s] = (sum(ok(i) for i in idx), len(idx))
    for lab in ["classical", "pop", "rock"]:
        idx = [i for i in valid if meta[i]["set"] == "emotify-dev" and meta[i]["label"] == lab]
        out[f"emotify-{lab}"] = (sum(ok(i) for i in idx), len(idx))
    idx = [i for i in valid if meta[i]["set"] == "emotify-dev" and meta[i]["label"] != "electronic"]
    out["emotify-3class"] = (sum(ok(i) for i in idx), len(idx))
    el = [i for i in valid if meta[i]["label"] == "electronic"]
    out["electronic->"] = {g: int(sum(LABELS[int(np.argmax(preds[i]))] == g for i in el)) for g in LABELS}
    return out


def report(meta, preds, yam, log=print) -> None:
    base = np.array([m["bundled_probs"] for m in meta])
    rows = {"bundled (fp32 ONNX, classify path)": base, "this run": preds}
    if yam:
        rows["YAMNet zero-shot (teacher)"] = np.array([yamnet_dist(yam, m["id"]) if yamnet_dist(yam, m["id"]) is not None
                                                       else np.full(len(LABELS), 0.1) for m in meta])
    sums = {name: summarise(meta, p) for name, p in rows.items()}
    keys = [k for k in sums["this run"] if k != "electronic->"]
    for k in keys:
        log(f"{k:18s} " + " | ".join(f"{name.split(' ')[0]}: {fmt(*sums[name][k])}" for name in rows))
    for name in rows:
        log(f"electronic -> ({name.split(' ')[0]}): " + ", ".join(f"{g} {n}" for g, n in sums[name]["electronic->"].items() if n))


def cmd_report(args) -> None:
    meta, _, yam = load_all()
    preds = np.load(OUT / "runs" / args.tag / "preds.npy")
    report(meta, preds, yam)
    if args.confusion:
        for s in ["genre-dev-real", "emotify-dev"]:
            print(f"-- {s} mistakes")
            for i, m in enumerate(meta):
                if m["set"] == s and not np.isnan(preds[i]).any():
                    p = LABELS[int(np.argmax(preds[i]))]
                    b = LABELS[int(np.argmax(m["bundled_probs"]))]
                    if p != m["label"] or b != m["label"]:
                        print(f"  {m['id']:22s} {m['label']:10s} bundled {b:10s} run {p}")


# ---------------------------------------------------------------- manifest
def cmd_manifest(args) -> None:
    meta, _, yam = load_all()
    run = json.loads((OUT / "runs" / args.tag / "run.json").read_text())
    folds = run["folds"]
    path = REPO / "trainer" / "manifests" / "realmusic-dev.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    lic = {"genre-dev-gtzan": "GTZAN (research use; see genre-dev README)",
           "genre-dev-real": "see source repository (genre-dev README)",
           "emotify-dev": "CC BY-NC-SA (Magnatune via Emotify, Aljanaki et al. 2016)"}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "set", "source", "commit", "licence", "label", "label_used", "teachers", "split", "run"])
        for m, k in zip(meta, folds):
            file = m["path"].replace(str(REPO.parent) + "/", "../")
            a = run["args"]
            names = (["bbnn-gtzan-augmented-fold0 (seed normalisation, classify fp32)"] if a["teacher_bundled"] else []) + \
                    ([f"yamnet ten genre scores ^{a['yamnet_power']}"] if a["teacher_yamnet"] else [])
            if m["label"] in LABELS:
                label_used = f"{a['w_true']} x one-hot {m['label']}" + (f" + {1 - a['w_true']:.2f} x teachers" if names else "")
            else:
                label_used = "not used for training (no GTZAN label)" if a["electronic"] == "drop" else f"teacher-only ({a['electronic']})"
            teachers = " + ".join(names) if m["label"] in LABELS or a["electronic"] != "drop" else ""
            w.writerow([file, m["set"], m["source"], m["commit"], lic[m["set"]], m["label"], label_used, teachers,
                        f"cv{len(set(folds))}-fold{k} (dev only; shared set, not shipped)", args.tag])
    print(f"wrote {path} ({len(meta)} rows)")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("cache")
    cv = sub.add_parser("cv")
    cv.add_argument("--tag", required=True)
    cv.add_argument("--k", type=int, default=3)
    cv.add_argument("--fold-seed", type=int, default=0)
    cv.add_argument("--only-folds", type=int, nargs="*")
    cv.add_argument("--seed", type=int, default=0)
    cv.add_argument("--ref-db", type=float)
    cv.add_argument("--zero-shot", action="store_true")
    cv.add_argument("--epochs", type=int, default=6)
    cv.add_argument("--batch", type=int, default=16)
    cv.add_argument("--crop", type=int, default=216)
    cv.add_argument("--lr", type=float, default=1e-3)
    cv.add_argument("--wd", type=float, default=1e-4)
    cv.add_argument("--gain", type=float, default=20.0)
    cv.add_argument("--specaug", type=int, default=1)
    cv.add_argument("--bn-train", action="store_true")
    cv.add_argument("--train-all", type=int, default=1)
    cv.add_argument("--w-true", type=float, default=0.5)
    cv.add_argument("--teacher-bundled", type=int, default=1)
    cv.add_argument("--teacher-yamnet", type=int, default=1)
    cv.add_argument("--yamnet-power", type=float, default=1.0)
    cv.add_argument("--electronic", choices=["drop", "teacher", "yamnet"], default="drop")
    cv.add_argument("--save-models", action="store_true")
    cv.add_argument("--balance", type=int, default=0)
    cv.add_argument("--norm", choices=["fixed", "seed"], default="fixed")
    cv.add_argument("--freeze-stem", action="store_true")
    cv.add_argument("--pct-start", type=float, default=0.15)
    fc = sub.add_parser("featcache")
    fc.add_argument("--ref-db", type=float)
    sub.add_parser("pool")
    cf = sub.add_parser("cvfeat")
    for a, kw in [("--tag", dict(required=True)), ("--k", dict(type=int, default=3)), ("--fold-seed", dict(type=int, default=0)),
                  ("--seed", dict(type=int, default=0)), ("--epochs", dict(type=int, default=30)), ("--batch", dict(type=int, default=32)),
                  ("--crop", dict(type=int, default=216)), ("--lr", dict(type=float, default=3e-3)), ("--wd", dict(type=float, default=1e-3)),
                  ("--specaug", dict(type=int, default=1)), ("--bn-train", dict(action="store_true")), ("--train-all", dict(type=int, default=1)),
                  ("--w-true", dict(type=float, default=0.5)), ("--teacher-bundled", dict(type=int, default=1)),
                  ("--teacher-yamnet", dict(type=int, default=1)), ("--yamnet-power", dict(type=float, default=1.0)),
                  ("--electronic", dict(choices=["drop", "teacher", "yamnet"], default="drop")), ("--balance", dict(type=int, default=0)), ("--save-models", dict(action="store_true"))]:
        cf.add_argument(a, **kw)
    lv = sub.add_parser("levels")
    lv.add_argument("--tag")
    lv.add_argument("--per-group", type=int, default=3)
    lv.add_argument("--gains", type=float, nargs="+", default=[-20.0, -10.0, 0.0, 10.0, 20.0])
    rp = sub.add_parser("report")
    rp.add_argument("--tag", required=True)
    rp.add_argument("--confusion", action="store_true")
    mf = sub.add_parser("manifest")
    mf.add_argument("--tag", required=True)
    args = ap.parse_args()
    {"levels": cmd_levels, "pool": cmd_pool, "cvfeat": cmd_cvfeat, "featcache": cmd_featcache, "cache": cmd_cache, "cv": cmd_cv, "report": cmd_report, "manifest": cmd_manifest}[args.cmd](args)



# ---------------------------------------------------------------- frozen-feature variant (2-core budget)
# A full fine-tune measured ~15 s per step of 16 x 10 s crops on this contended 2-core machine (1.3 s per
# 30 s window forward), so the affordable experiment freezes the stem and the first two broadcast blocks
# and the three broadcast blocks (the bundled weights) and caches their output (416 x 161 x 128, float16) once
# per window, with the fixed normalisation at 0 dB gain; the transition (BN, ReLU, 1x1 conv 416->32, pool)
# and the head (BN, ReLU, mean, dense) are then fine-tuned from the bundled weights on that cache.
FEAT = OUT / "feat_block3.npy"
FEAT_META = OUT / "feat_block3.json"


def cmd_featcache(args) -> None:
    import torch
    from trainer.checkpoint import load_checkpoint

    torch.set_num_threads(2)
    meta, frames, _ = load_all()
    ref_db = args.ref_db if args.ref_db is not None else choose_ref_db(meta, frames)
    model, _, _ = load_checkpoint(BUNDLED_PT)
    wins = [(i, w) for i in range(len(meta)) for w in range(len(windows_of(frames[i])))]
    shape = (len(wins), 416, 161, 128)
    mm = np.lib.format.open_memmap(FEAT, mode="w+", dtype=np.float16, shape=shape)
    t0 = time.time()
    with torch.no_grad():
        for j, (i, w) in enumerate(wins):
            x = torch.from_numpy(fixed_norm(windows_of(frames[i])[w], ref_db)[None])
            h = model.broadcast(model.stem(x.unsqueeze(1)))
            mm[j] = h[0].numpy().astype(np.float16)
            if j % 50 == 0:
                print(j, len(wins), f"{time.time() - t0:.0f}s", flush=True)
    mm.flush()
    FEAT_META.write_text(json.dumps({"ref_db": ref_db, "windows": wins, "gain_db": 0.0}))
    print("done", time.time() - t0)


POOLED = OUT / "feat_pooled.npy"


def cmd_pool(args) -> None:
    """a = avgpool2x2(relu(bn(h))) with the transition's own BN (frozen): what its 1x1 conv sees, 4x smaller.

    avgpool and a 1x1 conv are both linear and commute, so conv(a) equals the bundled transition's output.
    """
    import torch
    from trainer.checkpoint import load_checkpoint

    torch.set_num_threads(2)
    model, _, _ = load_checkpoint(BUNDLED_PT)
    bn = model.transition[0][0]
    h = np.load(FEAT, mmap_mode="r")
    out = np.lib.format.open_memmap(POOLED, mode="w+", dtype=np.float16, shape=(h.shape[0], 416, 80, 64))
    with torch.no_grad():
        for j in range(h.shape[0]):
            x = torch.relu(bn(torch.from_numpy(np.asarray(h[j], dtype=np.float32))[None]))
            out[j] = torch.nn.functional.avg_pool2d(x, 2, 2)[0].numpy().astype(np.float16)
    out.flush()
    print("pooled", out.shape)


class Head:
    """The bundled transition conv (416->32) + head BN/ReLU/mean + dense, on pooled cached features."""

    @staticmethod
    def build():
        import torch
        from torch import nn
        from trainer.checkpoint import load_checkpoint

        model, _, _ = load_checkpoint(BUNDLED_PT)

        class H(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = model.transition[0][2]
                self.head_norm = model.head_norm
                self.classifier = model.classifier

            def forward(self, a):
                z = self.head_norm(self.conv(a)).mean(dim=(2, 3))
                return self.classifier(z)

        return H()


def cmd_cvfeat(args) -> None:
    import torch

    torch.set_num_threads(2)
    meta, _, yam = load_all()
    fm = json.loads(FEAT_META.read_text())
    feats = np.load(POOLED, mmap_mode="r")
    wins_of: dict[int, list[int]] = {}
    for j, (i, w) in enumerate(fm["windows"]):
        wins_of.setdefault(i, []).append(j)
    run, log = open_run(args.tag)
    log(f"== {args.tag} {time.strftime('%H:%M:%S')} ref_db={fm['ref_db']} args={vars(args)}")
    targets = [soft_target(m, yam, args) for m in meta]
    folds = make_folds(meta, args.k, args.fold_seed)
    preds = np.full((len(meta), len(LABELS)), np.nan)
    times = []
    for k in range(args.k):
        rng = np.random.default_rng(args.seed + k)
        torch.manual_seed(args.seed + k)
        tr = np.array([i for i in range(len(meta)) if folds[i] != k and targets[i] is not None])
        te = [i for i in range(len(meta)) if folds[i] == k]
        t0 = time.time()
        Xtr = {i: np.asarray(feats[wins_of[i][0]]) for i in tr}  # first window (378 of 383 clips have one)
        net = Head.build()
        params = list(net.parameters()) if args.train_all else list(net.classifier.parameters())
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.wd)
        spe = max(1, len(tr) // args.batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=spe * args.epochs, pct_start=args.pct_start)
        crop = args.crop // 8  # input frames -> pooled positions
        if args.balance:  # each (set, label) group drawn equally often: emotify's 225 pop/rock/classical clips
            grp = [(meta[i]["set"].replace("-gtzan", "").replace("-real", ""), meta[i]["label"]) for i in tr]
            cnt = {g: grp.count(g) for g in set(grp)}
            wts = np.array([1.0 / cnt[g] for g in grp]); wts /= wts.sum()
        for ep in range(args.epochs):
            order = rng.choice(tr, size=len(tr), p=wts) if args.balance else rng.permutation(tr)
            losses = []
            for b in range(spe):
                idx = order[b * args.batch : (b + 1) * args.batch]
                xs = []
                for i in idx:
                    a = Xtr[i]
                    s = rng.integers(0, a.shape[1] - crop + 1)
                    x = a[:, s : s + crop].astype(np.float32)
                    if args.specaug:
                        for _ in range(2):
                            w = rng.integers(0, 9); f0 = rng.integers(0, 64 - w + 1); x[:, :, f0 : f0 + w] = 0
                    xs.append(x)
                net.train()
                if not args.bn_train:
                    set_bn_eval(net)
                logits = net(torch.from_numpy(np.stack(xs)))
                y = torch.from_numpy(np.stack([targets[i] for i in idx])).float()
                loss = -(y * torch.log_softmax(logits, -1)).sum(-1).mean()
                opt.zero_grad(); loss.backward(); opt.step(); sched.step()
                losses.append(loss.item())
            if ep % 5 == 4 or ep == args.epochs - 1:
                log(f"  fold {k} epoch {ep + 1} loss {np.mean(losses):.3f} ({time.time() - t0:.0f}s)")
        times.append(time.time() - t0)
        net.eval()
        with torch.no_grad():
            for i in te:
                x = torch.from_numpy(np.stack([np.asarray(feats[j], dtype=np.float32) for j in wins_of[i]]))
                preds[i] = torch.softmax(net(x), -1).mean(0).numpy()
        if args.save_models:
            torch.save(net.state_dict(), run / f"head-fold{k}.pt")
    log(f"train seconds per fold: {[round(t) for t in times]}")
    np.save(run / "preds.npy", preds)
    json.dump({"ref_db": fm["ref_db"], "folds": folds.tolist(), "args": vars(args)}, open(run / "run.json", "w"))
    report(meta, preds, yam, log)


def cmd_levels(args) -> None:
    """Level sensitivity: the bundled weights with the fixed normalisation at several gains (a stratified subset),
    optionally with the trained heads of a cvfeat run (--tag, saved with --save-models) on the held-out clips."""
    import torch
    from trainer.checkpoint import load_checkpoint

    torch.set_num_threads(2)
    meta, frames, _ = load_all()
    fm = json.loads(FEAT_META.read_text())
    ref_db = fm["ref_db"]
    model, _, _ = load_checkpoint(BUNDLED_PT)
    heads = {}
    if args.tag:
        run = OUT / "runs" / args.tag
        folds = json.loads((run / "run.json").read_text())["folds"]
        for k in sorted(set(folds)):
            h = Head.build(); h.load_state_dict(torch.load(run / f"head-fold{k}.pt")); h.eval(); heads[k] = h
    rng = np.random.default_rng(1)
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(meta):
        groups.setdefault((m["set"], m["label"]), []).append(i)
    sub = sorted(j for g in groups.values() for j in rng.permutation(g)[: args.per_group])
    res = {g: {"bundled": [], "head": []} for g in args.gains}
    t0 = time.time()
    with torch.no_grad():
        for i in sub:
            x = windows_of(frames[i])[0]
            for g in args.gains:
                inp = torch.from_numpy(fixed_norm(x, ref_db, g)[None])
                h = model.broadcast(model.stem(inp.unsqueeze(1)))
                logits = model.classifier(model.head_norm(model.transition(h)).mean(dim=(2, 3)))
                res[g]["bundled"].append(LABELS[int(logits.argmax())])
                if heads:
                    bn = model.transition[0][0]
                    a = torch.nn.functional.avg_pool2d(torch.relu(bn(h)), 2, 2)
                    res[g]["head"].append(LABELS[int(heads[folds[i]](a).argmax())])
    print(f"{len(sub)} clips, {time.time() - t0:.0f}s")
    truth = [meta[i]["label"] for i in sub]
    for kind in ["bundled", "head"] if heads else ["bundled"]:
        ref = res[0.0][kind] if 0.0 in res else None
        for g in args.gains:
            acc = np.mean([p == t for p, t in zip(res[g][kind], truth) if t in LABELS])
            agree = np.mean([p == r for p, r in zip(res[g][kind], ref)]) if ref else float("nan")
            print(f"{kind:8s} gain {g:+5.1f} dB: accuracy {acc:.2f} (labelled clips), same top-1 as 0 dB {agree:.2f}")


if __name__ == "__main__":
    main()
