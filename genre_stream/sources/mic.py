"""Live capture from a sound card through sounddevice/PortAudio.

The PortAudio callback runs on a real-time thread: it only copies the block into
a bounded queue and counts an overflow when the queue is full, so a slow
consumer (or a busy CPU) loses audio, never stalls the capture. This thread
takes blocks off the queue, mixes to mono, resamples from the device's native
rate and emits chunks. When the device fails or goes silent (unplugged USB
interface, ALSA error) it is closed and reopened with backoff, resolving the
device by name again since indices change when devices come and go.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from ..audio.frontend import SAMPLE_RATE
from ..audio.resample import StreamResampler
from ..common.backoff import Backoff
from .base import AudioChunk, Emit, Source, SourceError, SourceProblem, StreamClock
from .devices import AudioDeviceError, import_sounddevice, resolve_input_device

log = logging.getLogger(__name__)

# PortAudio enumerates devices once, when it is initialised, so a device plugged in
# (or back in) later is invisible until PortAudio is re-initialised. That closes
# every stream of the process, so it is only done while no mic source is capturing.
_open_streams = 0
_pa_lock = threading.Lock()


def _refresh_devices(sd: Any) -> None:
    """Re-initialise PortAudio so that it sees the devices present now (no-op while any stream is open)."""
    with _pa_lock:
        if _open_streams:
            return
        try:
            sd._terminate()
            sd._initialize()
        except Exception as exc:  # sounddevice's private API: never let a refresh attempt kill the source
            log.debug("re-initialising PortAudio failed: %s", exc)


class MicSource(Source):
    finite = False

    def __init__(
        self,
        source_id: str,
        device: str | None = None,
        *,
        block_seconds: float = 0.05,
        queue_seconds: float = 5.0,
        stall_seconds: float = 5.0,
        reconnect_max_seconds: float = 30.0,
    ) -> None:
        self.id = source_id
        self.device = device
        self.block_seconds = block_seconds
        self.queue_blocks = max(2, int(round(queue_seconds / block_seconds)))
        self.stall_seconds = stall_seconds
        self.reconnect_max_seconds = reconnect_max_seconds
        self._queue: queue.Queue[tuple[np.ndarray, float]] = queue.Queue(maxsize=self.queue_blocks)
        self._overflows = 0  # blocks dropped because the queue was full
        self._input_overflows = 0  # PortAudio/driver-side overruns
        self._reconnects = 0
        self._opened = 0
        self._clock = StreamClock()
        self.device_name: str | None = None
        self.native_rate: int | None = None

    def stats(self) -> dict[str, float | int]:
        return {
            "overflows": self._overflows,
            "input_overflows": self._input_overflows,
            "reconnects": self._reconnects,
            "queue_depth": self._queue.qsize(),
            "queue_capacity": self.queue_blocks,
        }

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        """PortAudio's thread: copy and hand over, never block or allocate more than the copy."""
        if status and status.input_overflow:
            self._input_overflows += 1
        try:
            self._queue.put_nowait((indata.copy(), time.monotonic()))
        except queue.Full:
            self._overflows += 1

    def run(self, emit: Emit, stop: threading.Event) -> None:
        try:
            sd = import_sounddevice()
        except AudioDeviceError as exc:
            raise SourceError(f"source {self.id}: {exc}") from exc
        backoff = Backoff(maximum=self.reconnect_max_seconds)
        self._clock = StreamClock()
        while not stop.is_set():
            if self._reconnects:
                _refresh_devices(sd)
            try:
                stream, resampler, channels = self._open(sd)
            except (AudioDeviceError, sd.PortAudioError, ValueError) as exc:
                reason = f"cannot open input device {self.device or 'default'!r}: {exc}; retrying in {backoff.next_delay:.0f} s"
                emit(SourceProblem(self.id, reason))  # the daemon logs it, once
                self._reconnects += 1
                if not backoff.wait(stop):
                    return
                continue
            if self._opened > 1:
                self._clock.reconnected()
            reason = self._pump(stream, resampler, channels, emit, stop)
            if reason is None:
                return
            emit(SourceProblem(self.id, f"{reason}; reopening the device"))
            self._reconnects += 1
            if self._clock.samples:
                backoff.reset()  # it worked for a while: start the delays again from 1 s
            if not backoff.wait(stop):
                return

    def _open(self, sd: Any) -> tuple[Any, StreamResampler, int]:
        dev = resolve_input_device(self.device)
        rate = int(round(dev.default_samplerate))
        channels = min(2, dev.channels)
        blocksize = max(64, int(round(rate * self.block_seconds)))
        self._queue = queue.Queue(maxsize=self.queue_blocks)
        stream = sd.InputStream(
            device=dev.index,
            samplerate=rate,
            channels=channels,
            # int16: every capture device offers it natively, 16 bits are plenty for tagging, and
            # ALSA's plug layer has been seen to corrupt float conversions of file-backed devices.
            dtype="int16",
            blocksize=blocksize,  # fixed: variable block sizes through ALSA plugins come with glitches
            callback=self._callback,
        )
        global _open_streams
        with _pa_lock:
            try:
                stream.start()
            except Exception:
                stream.close()
                raise
            _open_streams += 1
        self._opened += 1
        self.device_name = dev.name
        self.native_rate = rate
        log.info("%s: capturing from %r (index %d) at %d Hz, %d channel(s)", self.id, dev.name, dev.index, rate, channels)
        return stream, StreamResampler(rate, SAMPLE_RATE), channels

    def _pump(self, stream: Any, resampler: StreamResampler, channels: int, emit: Emit, stop: threading.Event) -> str | None:
        """Move blocks from the queue to ``emit``; the reason the device failed, or None when stopped."""
        global _open_streams
        last_data = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    block, arrived = self._queue.get(timeout=0.2)
                except queue.Empty:
                    if not stream.active:
                        return "input stream stopped (device gone?)"
                    if time.monotonic() - last_data > self.stall_seconds:
                        return f"no audio from the device for {self.stall_seconds:.0f} s"
                    continue
                last_data = time.monotonic()
                mono = (block.mean(axis=1, dtype=np.float32) if channels > 1 else block[:, 0].astype(np.float32)) / 32768.0
                samples = resampler.push(mono)
                if samples.size == 0:
                    continue
                emit(AudioChunk(self.id, samples, self._clock.stamp(samples.size), arrived))
            return None
        finally:
            with _pa_lock:
                _open_streams -= 1
                try:
                    stream.abort()
                    stream.close()
                except Exception as exc:  # closing a vanished device can fail in many PortAudio ways
                    log.debug("%s: closing the stream failed: %s", self.id, exc)
