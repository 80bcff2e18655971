"""Real speech for the voice tests: espeak-ng speaks sentences, sox makes them 16 kHz mono, numpy
places each at a known offset in one recording. Made once per test session and shared."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

RATE = 16_000


@dataclass(frozen=True)
class Spoken:
    """A synthesised note: its WAV bytes and each sentence with the second it starts at."""

    title: str
    wav: bytes
    sentences: tuple[tuple[float, str], ...]


def speak(text: str, workdir: Path, name: str) -> np.ndarray:
    # sox dithers with random noise when it converts unless told not to (-D): the same sentence then
    # made different samples in each test process, and tiny.en heard "quarterly budget review" as
    # "quarter-limajat renew" in some of them. Without dither the recording is the same every time.
    raw = workdir / f"{name}.raw.wav"
    out = workdir / f"{name}.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(
        ["sox", "-D", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out)], check=True, capture_output=True
    )
    with wave.open(str(out)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def to_wav(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def compose(title: str, sentences: list[tuple[float, str]], workdir: Path, tail: float = 1.0) -> Spoken:
    """Speak each sentence and place it at its offset (seconds) in one recording."""
    parts = [(offset, speak(text, workdir, f"{title}-{i}")) for i, (offset, text) in enumerate(sentences)]
    length = max(int(offset * RATE) + len(s) for offset, s in parts) + int(tail * RATE)
    track = np.zeros(length, dtype=np.int32)
    for offset, samples in parts:
        start = int(offset * RATE)
        if start < len(track) and track[start : start + len(samples)].any():
            raise ValueError("sentences overlap")
        track[start : start + len(samples)] += samples
    return Spoken(title, to_wav(np.clip(track, -32768, 32767)), tuple(sentences))


@dataclass(frozen=True)
class Notes:
    budget: Spoken
    garden: Spoken
    travel: Spoken
    silence: bytes
    empty: bytes  # a WAV header and no samples


@pytest.fixture(scope="session")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> Notes:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.fail("espeak-ng and sox are needed (make test installs them)", pytrace=False)
    workdir = tmp_path_factory.mktemp("speech")
    return Notes(
        budget=compose(
            "Budget",
            [
                (0.5, "The quarterly budget review moves to Thursday afternoon."),
                (6.5, "Please send the revised spreadsheet to Maria before noon."),
            ],
            workdir,
        ),
        garden=compose(
            "Garden",
            [
                (0.5, "I planted tomatoes and basil in the back garden today."),
                (6.5, "The roses need water every morning during the heat wave."),
            ],
            workdir,
        ),
        travel=compose("Travel", [(0.5, "My flight to Lisbon leaves on Friday at seven in the evening.")], workdir),
        silence=to_wav(np.zeros(3 * RATE, dtype=np.int16)),
        empty=to_wav(np.zeros(0, dtype=np.int16)),
    )
