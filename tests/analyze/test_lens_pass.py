"""One chunk of the lens pass: every per-token step and per-layer sum equals a float64 reference on float64 logits."""

from __future__ import annotations

import numpy as np
import torch

from references import (
    entropy_reference,
    fisher_rao_reference,
    hellinger_reference,
    jensen_shannon_reference,
    kl_reference,
)
from spinal.analyze.transport.lens_pass import transport_chunk
from spinal.lens import Lens, LensSpec

LAYERS, TOKENS, DIM, VOCAB = 4, 30, 16, 300


def _case() -> tuple[Lens, torch.Tensor]:
    """An RMS-norm lens and hidden states (layer, token, dim) whose steps shrink to L ≈ 0.02.

    Smaller steps would measure the float32 readout (logit rounding ~1e-6 moves a chord of 1e-3 by
    ~1e-3 relative), not the kernels.
    """
    g = torch.Generator().manual_seed(0)
    lens = Lens(LensSpec(norm="rms"), torch.randn(VOCAB, DIM, generator=g),
                norm_weight=1 + 0.1 * torch.randn(DIM, generator=g))
    hs = [3 * torch.randn(TOKENS, DIM, generator=g)]
    for step in range(LAYERS - 1):
        hs.append(hs[-1] + 0.3**step * torch.randn(TOKENS, DIM, generator=g))
    return lens, torch.stack(hs)  # (layer, token, dim)


def _probs64(lens: Lens, h: torch.Tensor) -> np.ndarray:
    """float64 softmax of the RMS lens written out: W_U · (w ⊙ h / √(mean h² + eps)), (token, vocab)."""
    x = h.double()
    x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + lens.spec.eps) * lens.norm_weight.double()
    return torch.softmax(x @ lens.unembed.double().T, -1).numpy()


def test_transport_chunk_equals_float64_references():
    lens, h = _case()
    companions = torch.tensor([0, 4, 5, 17, 29])
    bufs = [torch.full((TOKENS, VOCAB), float("nan")) for _ in range(3)]  # scratch: nothing may leak from it
    got = transport_chunk(lens, h, companions, bufs)
    p = [_probs64(lens, h[layer]) for layer in range(LAYERS)]  # each (token, vocab)
    c = companions.numpy()
    for j in range(LAYERS - 1):
        ref_L = fisher_rao_reference(p[j], p[j + 1])
        assert ref_L.min() > 1e-2  # see _case
        np.testing.assert_allclose(got.steps_L[j], ref_L, rtol=1e-4)
        np.testing.assert_allclose(got.sums["hellinger"][j], hellinger_reference(p[j], p[j + 1]).sum(), rtol=1e-5)
        np.testing.assert_allclose(got.sums["js"][j], jensen_shannon_reference(p[j][c], p[j + 1][c]).sum(),
                                   rtol=1e-4)
    for j in range(LAYERS):
        np.testing.assert_allclose(got.sums["entropy"][j], entropy_reference(p[j][c]).sum(), rtol=1e-5)
        np.testing.assert_allclose(got.sums["kl_final"][j], kl_reference(p[-1][c], p[j][c]).sum(), rtol=1e-4)
    np.testing.assert_allclose(got.chord, fisher_rao_reference(p[0], p[-1]), rtol=1e-5)
    assert got.sums["hellinger"][-1] == got.sums["js"][-1] == 0.0  # LAYERS − 1 steps only
