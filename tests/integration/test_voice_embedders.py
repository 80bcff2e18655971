"""The two embedders a person can choose (GRACE_VOICE_EMBEDDER): the same model, all-MiniLM-L6-v2, with
int8 weights on onnxruntime (the default) or on torch through sentence-transformers. Real models, no fakes."""

from __future__ import annotations

import numpy as np
import pytest

from grace import errors
from grace.config import load_settings
from grace.voice.engines import engines

SENTENCES = [
    "The quarterly budget review moves to Thursday afternoon.",
    "Please send the revised spreadsheet to Maria before noon.",
    "The roses need water every morning during the heat wave.",
    "when did the financial review get rescheduled",
]


def test_both_embedders_give_the_same_vectors_and_rank_the_same_sentence_first() -> None:
    int8 = engines(None, "minilm-int8").embedder
    torch = engines(None, "minilm").embedder
    assert (int8.engine, torch.engine) == ("onnxruntime", "sentence-transformers")
    a, b = int8.embed(SENTENCES), torch.embed(SENTENCES)
    assert a.shape == b.shape == (len(SENTENCES), 384)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    assert float(np.min(np.sum(a * b, axis=1))) >= 0.999  # each sentence's two vectors, cosine
    # The paraphrased question finds the budget sentence with either, so notes embedded by one and
    # searched by the other still find what was said.
    for vectors in (a, b):
        scores = vectors[:3] @ vectors[3]
        assert int(np.argmax(scores)) == 0, scores


def test_an_unknown_embedder_is_refused_naming_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRACE_VOICE_EMBEDDER", "bert-large")
    with pytest.raises(errors.ConfigurationError, match="GRACE_VOICE_EMBEDDER"):
        load_settings()
    with pytest.raises(errors.ConfigurationError, match="minilm-int8, minilm"):
        engines(None, "bert-large")
