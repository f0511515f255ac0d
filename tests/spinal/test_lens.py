"""The lens readout: √p and companion log p from one in-place buffer equal a float64 log-softmax reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spinal.lens import Lens, LensSpec


def _lens(kind: str, vocab: int = 500, dim: int = 24) -> Lens:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(vocab, dim, generator=g)
    if kind == "rms":
        return Lens(LensSpec(norm="rms"), w, norm_weight=1 + 0.1 * torch.randn(dim, generator=g))
    if kind == "layer-bias":
        return Lens(LensSpec(norm="layer", has_norm_bias=True, has_unembed_bias=True, logit_scale=0.5), w,
                    norm_weight=torch.ones(dim), norm_bias=torch.randn(dim, generator=g),
                    unembed_bias=torch.randn(vocab, generator=g))
    return Lens(LensSpec(norm="rms", weight_offset=1.0, logit_softcap=3.0), 4 * w,  # Gemma-2-like, capped
                norm_weight=0.1 * torch.randn(dim, generator=g))


def _reference_log_softmax(lens: Lens, h: torch.Tensor) -> np.ndarray:
    """float64: the lens formula written out, then a float64 log-softmax."""
    s, x = lens.spec, h.double()
    if s.norm == "layer":
        x = x - x.mean(-1, keepdim=True)
    x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + s.eps)
    x = x * (lens.norm_weight.double() + s.weight_offset)
    if lens.norm_bias is not None:
        x = x + lens.norm_bias.double()
    z = x @ lens.unembed.double().T
    if lens.unembed_bias is not None:
        z = z + lens.unembed_bias.double()
    z = z * s.logit_scale
    if s.logit_softcap is not None:
        z = s.logit_softcap * torch.tanh(z / s.logit_softcap)
    return torch.log_softmax(z, -1).numpy()


@pytest.mark.parametrize("kind", ["rms", "layer-bias", "softcap"])
def test_sqrt_probs_and_row_log_probs_equal_float64_log_softmax(kind):
    lens = _lens(kind)
    h = 5 * torch.randn(40, 24, generator=torch.Generator().manual_seed(1))
    ref = _reference_log_softmax(lens, h)
    rows = torch.tensor([0, 7, 39])
    buf = torch.full((64, 500), float("nan"))  # reused buffer, larger than needed
    root, logp = lens.sqrt_probs(h, out=buf[:40], rows=rows)
    assert root.data_ptr() == buf.data_ptr()  # written in the caller's buffer
    np.testing.assert_allclose(root.double().numpy(), np.exp(0.5 * ref), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(logp.numpy(), ref[rows.numpy()], rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose((root.double() ** 2).sum(-1).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(lens.log_probs(h).numpy(), ref, rtol=1e-5, atol=2e-5)
    again, none = lens.sqrt_probs(h)
    assert none is None and torch.equal(again, root)


def test_lens_chunks_are_capped_near_the_caches_and_bounded_by_the_memory_budget():
    """Small vocabularies get CHUNK_TOKENS rows (scratch buffers near the caches), large ones what the budget
    allows: three (chunk, vocab) float32 buffers within chunk_mib."""
    from spinal.lens import CHUNK_TOKENS

    def lens(vocab):
        return Lens(LensSpec(norm="none"), torch.zeros(vocab, 4))

    assert lens(3072).chunk_tokens(256, 3) == CHUNK_TOKENS == 512
    assert lens(128256).chunk_tokens(256, 3) == (256 << 20) // (4 * 128256 * 3) == 174
    assert lens(3072).chunk_tokens(1, 3) == 28 and lens(10**9).chunk_tokens(1, 3) == 1
