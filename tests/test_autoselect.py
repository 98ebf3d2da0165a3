"""`--model auto`: int8 only where it is faster here and its recorded real-music agreement meets the bar; cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from genre_stream import autoselect
from genre_stream.autoselect import AGREEMENT_BAR, CACHE_FILE, choose, int8_shortfalls
from genre_stream.models import is_auto
from genre_stream.engine import Engine

DEMO = REPO / "examples" / "demo.wav"


def _metadata(top1_gtzan: float = 1.0, top1_other: float = 0.98, dp: float = 0.02) -> dict:
    group = {"top1_agreement": top1_other, "mean_max_abs_dp": dp}
    return {"provenance": {"agreement": {"gtzan": {**group, "top1_agreement": top1_gtzan}, "non_gtzan": group}}}


@pytest.fixture
def timings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the measurement by fixed figures (fp32 100 ms, int8 40 ms); counts the calls."""
    calls: list[int] = []

    def fake(threads: int) -> tuple[float, float]:
        calls.append(threads)
        return 100.0, 40.0

    monkeypatch.setattr(autoselect, "time_exports", fake)
    return calls


def test_auto_spellings() -> None:
    assert is_auto(None) and is_auto("auto") and is_auto(Path("auto"))
    assert not is_auto("fp32") and not is_auto("int8") and not is_auto("model.onnx")


def test_bar_needs_a_recorded_check_that_meets_it() -> None:
    assert int8_shortfalls({"provenance": {}}) == ["the int8 export records no real-music agreement check"]
    assert int8_shortfalls(_metadata()) == []
    low = int8_shortfalls(_metadata(top1_other=0.909, dp=0.135))
    assert any("non_gtzan top-1 agreement 0.909" in s for s in low) and any("mean max|dp| 0.135" in s for s in low)
    assert int8_shortfalls(_metadata(top1_gtzan=AGREEMENT_BAR.min_top1_gtzan - 0.01))


def test_faster_eligible_int8_is_chosen_and_cached(tmp_path: Path, timings: list[int]) -> None:
    first = choose(2, tmp_path, _metadata())
    assert (first.name, first.cached, first.fp32_ms, first.int8_ms) == ("int8", False, 100.0, 40.0)
    stored = json.loads((tmp_path / CACHE_FILE).read_text())
    assert stored["name"] == "int8" and stored["key"]["threads"] == 2 and "2.50x" in stored["reason"]
    again = choose(2, tmp_path, _metadata())
    assert (again.name, again.cached) == ("int8", True) and timings == [2]  # reused: measured once
    other = choose(1, tmp_path, _metadata())  # another thread count is another measurement
    assert not other.cached and timings == [2, 1]


def test_slow_int8_means_fp32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autoselect, "time_exports", lambda threads: (100.0, 90.0))
    choice = choose(1, tmp_path, _metadata())
    assert choice.name == "fp32" and "1.11x" in choice.reason


def test_ineligible_int8_means_fp32_without_measuring(tmp_path: Path, timings: list[int], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="genre_stream.autoselect")
    choice = choose(1, tmp_path, _metadata(top1_other=0.9))
    assert choice.name == "fp32" and "not eligible" in choice.reason and timings == []
    assert "model auto -> fp32 (int8 not eligible: non_gtzan top-1 agreement 0.9 < 0.97)" in caplog.text


def test_engine_auto_loads_the_choice_and_overrides_win(tmp_path: Path, timings: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(autoselect, "bundled_metadata", lambda name: _metadata())
    auto = Engine("auto", device="cpu", threads=1, choice_cache=tmp_path)
    assert auto.choice is not None and auto.choice.name == "int8" and auto.precision == "int8" and auto.path.name.endswith(".int8.onnx")
    assert (tmp_path / CACHE_FILE).is_file()
    forced = Engine("fp32", device="cpu", threads=1, choice_cache=tmp_path / "unused")
    assert forced.choice is None and forced.precision == "fp32" and not (tmp_path / "unused").exists()
    assert timings == [1]


def test_classify_json_names_the_export(tmp_path: Path) -> None:
    for spec in ("int8", "fp32"):
        proc = run_cli("classify", "--json", "--model", spec, str(DEMO))
        assert proc.returncode == 0, proc.stderr
        obj = json.loads(proc.stdout)
        assert (obj["model"], obj["precision"]) == ("bbnn-gtzan-augmented-fold0", spec)
    cache = tmp_path / "cache"
    proc = run_cli("-v", "classify", "--json", str(DEMO), env={"XDG_CACHE_HOME": str(cache)})
    assert proc.returncode == 0, proc.stderr
    stored = json.loads((cache / "genre-stream" / CACHE_FILE).read_text())
    assert json.loads(proc.stdout)["precision"] == stored["name"]
    assert f"model auto -> {stored['name']}" in proc.stderr


def test_daemon_config_accepts_auto_and_still_refuses_missing_files(tmp_path: Path) -> None:
    from genre_stream.config import ConfigError, load_config

    assert str(load_config(flags={"model.path": "auto"}, environ={}).model.path) == "auto"
    with pytest.raises(ConfigError, match="model.path"):
        load_config(flags={"model.path": str(tmp_path / "missing.onnx")}, environ={})


def test_bundled_int8_records_its_check_and_keeps_its_calibration() -> None:
    """The shipped int8 carries its genre-dev figures (written by int8_agreement.py --write) beside its calibration."""
    from genre_stream.autoselect import bundled_metadata

    meta = bundled_metadata("int8")
    agreement = meta["provenance"]["agreement"]
    assert {"gtzan", "non_gtzan", "measured_on"} <= set(agreement) and agreement["non_gtzan"]["clips"] == 33
    assert meta["calibration"]["temperature"] > 1
    assert int8_shortfalls(meta) == AGREEMENT_BAR.shortfalls(agreement)
