"""`--model auto`: a rule over facts (provider, the int8 export's weight width and recorded agreement), never a timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from genre_stream.model import choice
from genre_stream.model.agreement import AGREEMENT_BAR
from genre_stream.model.bundled import is_auto
from genre_stream.model.choice import choose, int8_shortfalls, open_engine

DEMO = REPO / "examples" / "demo.wav"


def _metadata(top1_gtzan: float = 1.0, top1_other: float = 0.98, dp: float = 0.02, weight_bits: int = 7) -> dict:
    group = {"top1_agreement": top1_other, "mean_max_abs_dp": dp, "clips": 33}
    return {"provenance": {"quantization": {"weight_bits": weight_bits},
                           "agreement": {"gtzan": {**group, "top1_agreement": top1_gtzan}, "non_gtzan": group}}}


def test_auto_spellings() -> None:
    assert is_auto(None) and is_auto("auto") and is_auto(Path("auto"))
    assert not is_auto("fp32") and not is_auto("int8") and not is_auto("model.onnx")


def test_bar_needs_seven_bit_weights_and_a_recorded_check_that_meets_it() -> None:
    assert int8_shortfalls(_metadata()) == []
    assert "the int8 export records no real-music agreement check" in int8_shortfalls({"provenance": {"quantization": {"weight_bits": 7}}})
    low = int8_shortfalls(_metadata(top1_other=0.909, dp=0.135))
    assert any("non_gtzan top-1 agreement 0.909" in s for s in low) and any("mean max|dp| 0.135" in s for s in low)
    assert int8_shortfalls(_metadata(top1_gtzan=AGREEMENT_BAR.min_top1_trained - 0.01))
    # full-range weights (and exports made before the weight width was recorded) differ between CPUs
    for meta in (_metadata(weight_bits=8), {"provenance": {"agreement": _metadata()["provenance"]["agreement"]}}):
        assert any("8 bits" in s and "differ between CPUs" in s for s in int8_shortfalls(meta))


def test_the_choice_is_the_same_every_time_and_needs_no_stopwatch(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import time

    monkeypatch.setattr(time, "perf_counter", lambda: pytest.fail("auto must not time anything"))
    caplog.set_level("INFO", logger="genre_stream.model.choice")
    choices = {choose(True, _metadata()) for _ in range(5)}
    assert len(choices) == 1 and next(iter(choices))[0] == "int8"
    assert "model auto -> int8 (CPU; int8 with 7-bit weights gives the same answers on every CPU" in caplog.text
    assert choose(False, _metadata())[0] == "fp32"  # a GPU runs fp32


def test_ineligible_int8_means_fp32_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="genre_stream.model.choice")
    name, reason = choose(True, _metadata(top1_other=0.9))
    assert name == "fp32" and "not eligible" in reason
    assert "model auto -> fp32 (int8 not eligible: non_gtzan top-1 agreement 0.9 < 0.97)" in caplog.text
    assert choose(True, _metadata(weight_bits=8))[0] == "fp32"


def test_engine_auto_loads_the_choice_and_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(choice, "bundled_metadata", lambda name: _metadata())
    auto = open_engine("auto", device="cpu", threads=1)
    assert auto.chosen.startswith("auto -> int8 (") and auto.precision == "int8" and auto.path.name.endswith(".int8.onnx")
    monkeypatch.setattr(choice, "bundled_metadata", lambda name: _metadata(weight_bits=8))
    assert open_engine(None, device="cpu", threads=1).precision == "fp32"
    forced = open_engine("fp32", device="cpu", threads=1)
    assert forced.chosen == "named: bbnn-gtzan-augmented-fold0.fp32.onnx" and forced.precision == "fp32"


def test_classify_json_names_the_export_and_why(tmp_path: Path) -> None:
    for spec in ("int8", "fp32"):
        proc = run_cli("classify", "--json", "--model", spec, str(DEMO))
        assert proc.returncode == 0, proc.stderr
        obj = json.loads(proc.stdout)
        assert (obj["model"], obj["precision"]) == ("bbnn-gtzan-augmented-fold0", spec)
        assert obj["model_choice"] == f"named: bbnn-gtzan-augmented-fold0.{spec}.onnx"
    runs = []
    for i in range(2):  # fresh processes, each with its own empty cache: byte-identical answers
        proc = run_cli("-v", "classify", "--json", str(DEMO), env={"XDG_CACHE_HOME": str(tmp_path / f"cache{i}")})
        assert proc.returncode == 0, proc.stderr
        runs.append(proc.stdout)
        assert "model auto -> int8" in proc.stderr
        assert not (tmp_path / f"cache{i}" / "genre-stream").exists()  # nothing is measured or cached
    assert runs[0] == runs[1]
    obj = json.loads(runs[0])
    assert obj["precision"] == "int8" and obj["model_choice"].startswith("auto -> int8 (CPU; int8 with 7-bit weights")


def test_daemon_config_accepts_auto_and_still_refuses_missing_files(tmp_path: Path) -> None:
    from genre_stream.config import ConfigError, load_config

    assert str(load_config(flags={"model.path": "auto"}, environ={}).model.path) == "auto"
    with pytest.raises(ConfigError, match="model.path"):
        load_config(flags={"model.path": str(tmp_path / "missing.onnx")}, environ={})


def test_bundled_int8_records_its_check_and_keeps_its_calibration() -> None:
    """The shipped int8 carries its genre-dev figures (written by int8_agreement.py --write) beside its calibration."""
    from genre_stream.model.choice import bundled_metadata

    meta = bundled_metadata("int8")
    agreement = meta["provenance"]["agreement"]
    assert {"gtzan", "non_gtzan", "measured_on"} <= set(agreement) and agreement["non_gtzan"]["clips"] == 33
    assert meta["calibration"]["temperature"] > 1
    assert meta["provenance"]["quantization"]["weight_bits"] == 7
    assert int8_shortfalls(meta) == []  # the shipped int8 is what auto runs on a CPU
