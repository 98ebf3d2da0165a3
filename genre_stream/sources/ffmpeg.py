"""An ffmpeg subprocess that decodes anything it can read to raw mono float32 at SAMPLE_RATE (22050 Hz).

Shared by the file and stream sources: ffmpeg does demuxing, decoding, down-mixing
and resampling in constant memory, so a one-hour recording or an endless radio
stream costs the same few MB. Reads go through ``select`` with a timeout so the
caller can notice a stop request or a stalled stream instead of blocking forever.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import subprocess
import threading
from collections.abc import Sequence

import numpy as np

from ..audio.decode import ffmpeg_executable, ffmpeg_resample_args
from ..audio.frontend import SAMPLE_RATE
from ..common.redact import redact_text
from .base import SourceError

log = logging.getLogger(__name__)

BYTES_PER_SAMPLE = 4  # f32le
# Live input: probe 0.5 s / 64 kB instead of ffmpeg's 5 s / 5 MB before the first sample
# comes out, and write every packet at once rather than filling a 32 kB buffer.
LIVE_INPUT_ARGS = ("-probesize", "65536", "-analyzeduration", "500000")
LIVE_OUTPUT_ARGS = ("-flush_packets", "1")


class FfmpegPcm:
    """One ffmpeg run over ``url``; ``read`` returns samples, ``close`` the exit status and last errors."""

    def __init__(self, url: str, input_args: Sequence[str] = (), rate: int = SAMPLE_RATE, live: bool = False, fed: bool = False) -> None:
        """``fed``: the input comes through ``write`` (ffmpeg reads its stdin; ``url`` is then ``pipe:0``)."""
        exe = ffmpeg_executable()
        if exe is None:
            raise SourceError("no ffmpeg found (apt install ffmpeg, or pip install \"genre-stream[ffmpeg]\")")
        # rematrix_maxval 1: down-mix to the channel mean like audio.to_mono; ffmpeg's default
        # mixes stereo at -3 dB per channel, 1.41 times louder, which would skew silence levels.
        cmd = [exe, "-nostdin", "-hide_banner", "-loglevel", "error", *input_args, "-i", url, "-vn",
               "-f", "f32le", "-acodec", "pcm_f32le", "-rematrix_maxval", "1.0", "-ac", "1", *ffmpeg_resample_args(exe, rate),
               *(LIVE_OUTPUT_ARGS if live else ()), "pipe:1"]
        self._url = url
        log.debug("starting %s", redact_text(" ".join(cmd), url))
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if fed else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._pending = b""
        self._errors: collections.deque[str] = collections.deque(maxlen=5)
        self._stderr_thread = threading.Thread(target=self._drain_stderr, name="ffmpeg-stderr", daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self) -> None:
        """Keep reading stderr so a chatty ffmpeg never blocks on a full pipe; keep the last lines."""
        assert self._proc.stderr is not None
        for raw in self._proc.stderr:
            line = raw.decode(errors="replace").strip()
            if line:
                self._errors.append(line)
                log.debug("ffmpeg: %s", redact_text(line, self._url))

    def read(self, max_samples: int, timeout: float) -> np.ndarray | None:
        """Up to ``max_samples`` samples; empty array at end of input, None when nothing came within ``timeout``."""
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        data = os.read(fd, max_samples * BYTES_PER_SAMPLE)
        if not data:
            return np.zeros(0, dtype=np.float32)
        data = self._pending + data
        usable = len(data) - len(data) % BYTES_PER_SAMPLE
        self._pending = data[usable:]
        if usable == 0:
            return self.read(max_samples, timeout)
        return np.frombuffer(data[:usable], dtype="<f4").astype(np.float32)

    def write(self, data: bytes) -> bool:
        """Hand ffmpeg input bytes (``fed`` only); blocks while its pipe is full (a paced input reads slowly).
        False once ffmpeg no longer reads (it ended or was closed)."""
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
            return True
        except (BrokenPipeError, ValueError, OSError):
            return False

    def end_input(self) -> None:
        """No more input (``fed`` only): ffmpeg decodes what it has and ends."""
        if self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass

    def close(self, timeout: float = 3.0) -> tuple[int | None, str]:
        """Stop ffmpeg (if still running); its exit status and the last error lines it printed."""
        if self._proc.poll() is None:
            # Close our end first: an ffmpeg blocked writing into a full pipe does not act on
            # SIGTERM (its write restarts), but a closed pipe ends it at once with EPIPE.
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self.end_input()  # after ffmpeg ended: a thread writing into it has had EPIPE and let go of the pipe
        self._stderr_thread.join(timeout)
        return self._proc.returncode, " | ".join(self._errors)

    def finished(self, timeout: float = 3.0) -> tuple[int | None, str]:
        """Wait for ffmpeg to exit on its own after end of input; exit status and last errors."""
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.close(timeout)
