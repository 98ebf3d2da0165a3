"""``[pipeline]``: when and how a live source is classified (used by pipeline.SourcePipeline)."""

from __future__ import annotations

from dataclasses import dataclass

from ..audio.sanitize import SILENCE_DBFS
from .fields import check_ranges, flag, option, setting


@dataclass
class PipelineConfig:
    """When and how a live source is classified (see pipeline.SourcePipeline)."""

    hop_seconds: float = setting(5.0, 0, 3600, lo_open=True, cli=flag("--hop", help="Seconds between classifications."))
    # reuse the previous window's computation (fp32 and int8 models with a streaming pack, on the CPU); the hop is
    # then rounded down to whole 4-frame columns (1 s -> 0.93 s, 5 s unchanged): docs/STREAMING.md
    streaming: bool = option(True, cli=flag("--streaming/--no-streaming", help="Compute only what each hop adds to the "
                             "window (fp32 and int8 on the CPU; the hop is rounded down to a multiple of 4 mel frames)."))
    min_fill_seconds: float = setting(10.0, 0, 30, lo_open=True, note="(the window is 30 s)",
                                      cli=flag("--min-fill", help="Seconds buffered before the first classification."))
    silence_dbfs: float = setting(SILENCE_DBFS, -200, 0, hi_open=True, note="(dB below full scale)",
                                  cli=flag("--silence-dbfs", help="RMS level below which a window is 'silence'."))
    ema_alpha: float = setting(0.5, 0, 1, lo_open=True)
    hold_windows: int = setting(2, 1, 1000, cli=flag("--hold-windows", help="Windows a new genre must lead before it is announced."))
    margin: float = setting(0.1, 0, 1, hi_open=True, cli=flag("--margin", help="Smoothed probability lead a new genre needs."))
    # "uncertain" below this top probability, or below this lead over the second; None: the model's own default
    uncertain_threshold: float | None = setting(
        None, 0, 1, hi_open=True, note="(0 = never uncertain)", cli=flag(
            "--uncertain-threshold", help="State 'uncertain' below this calibrated top probability; 0 = never.", default_text="the model's"))
    uncertain_margin: float | None = setting(
        None, 0, 1, hi_open=True, note="(0 = off)", cli=flag(
            "--uncertain-margin", help="State 'uncertain' when the top genre leads the second by less; 0 = off.", default_text="the model's"))

    def __post_init__(self) -> None:
        check_ranges(self)
