"""Audio in: what a file really is (sniffed from its bytes, never its name), and its decoding.

PyAV (FFmpeg's libraries) decodes every container a person or a browser records: WAV, MP3, M4A
(MP4/AAC), WebM and Ogg (Opus, Vorbis), FLAC. The result is 16 kHz mono float32 samples, what the
speech model takes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np
import numpy.typing as npt

from grace import errors

__all__ = ["SAMPLE_RATE", "SILENCE_PEAK", "Decoded", "decode", "sniff"]

SAMPLE_RATE = 16_000
# A recording whose loudest sample stays under this (about -50 dBFS) holds no speech.
SILENCE_PEAK = 0.003


@dataclass(frozen=True)
class Decoded:
    samples: npt.NDArray[np.float32]

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def peak(self) -> float:
        return float(np.max(np.abs(self.samples))) if len(self.samples) else 0.0


def sniff(data: bytes) -> str:
    """Return the container ``data`` holds (wav, mp3, m4a, webm, ogg, flac); UnsupportedAudio otherwise."""
    head = data[:64]
    if len(data) == 0:
        raise errors.InvalidInput("the file is empty (0 bytes)")
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "webm"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:4] == b"fLaC":
        return "flac"
    raise errors.UnsupportedAudio()


def decode(data: bytes) -> Decoded:
    """Decode ``data`` to 16 kHz mono float32; InvalidInput if it is not decodable audio."""
    sniff(data)
    chunks: list[npt.NDArray[np.float32]] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise errors.InvalidInput("the file holds no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
    except errors.GraceError:
        raise
    except (av.FFmpegError, ValueError, IndexError, EOFError) as exc:
        raise errors.InvalidInput(
            f"the audio cannot be decoded ({type(exc).__name__}); it may be damaged or truncated"
        ) from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    if len(samples) == 0:
        raise errors.InvalidInput("the file holds no audio samples")
    return Decoded(samples)
