"""The logit lens as data: a declarative spec plus arrays, and the one function that applies it.

A store keeps the checkpoint's final norm, unembedding and this spec (no code, no pickles),
so the CPU analysis reads out any layer exactly as the model reads out its last one
(docs/method.md §3): ``logits = cap(scale · (W_U · finalnorm(h) + b))``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

NORM_KINDS = ("rms", "layer", "none")
# Tokens per lens chunk at most, whatever the memory budget allows: (chunk, vocab) scratch buffers that stay near
# the caches. One core, µs per token of the transport pass: vocab 3,072 (d = 96) 265 at 7,281 tokens, 123 at 512;
# vocab 49,152 (d = 576) 4,180 at 455, 3,667 at 256; vocab 128,256 (d = 4,096) is budget-bound at 174 tokens, where
# fewer would cost more (78,735 µs at 43 against 48,878).
CHUNK_TOKENS = 512


@dataclass(frozen=True)
class LensSpec:
    """How the checkpoint turns its last residual state into logits."""

    norm: str = field(default="rms", metadata={"help": "final norm kind: rms, layer or none"})
    eps: float = field(default=1e-6, metadata={"help": "norm epsilon, as in the model config"})
    weight_offset: float = field(
        default=0.0, metadata={"help": "added to the norm weight (Gemma uses 1 + w)"}
    )
    logit_softcap: float | None = field(
        default=None, metadata={"help": "final logit soft-cap c: logits = c·tanh(logits/c)"}
    )
    logit_scale: float = field(default=1.0, metadata={"help": "multiplier on the logits"})
    has_norm_bias: bool = False
    has_unembed_bias: bool = False

    def __post_init__(self) -> None:
        if self.norm not in NORM_KINDS:
            raise ValueError(f"LensSpec.norm={self.norm!r}; expected one of {NORM_KINDS}")
        if self.logit_softcap is not None and self.logit_softcap <= 0:
            raise ValueError(f"LensSpec.logit_softcap={self.logit_softcap}; must be > 0 or None")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LensSpec":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown lens spec keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class Lens:
    """A spec with its float32 arrays: norm weight/bias (dim,), unembedding (vocab, dim), bias (vocab,)."""

    spec: LensSpec
    unembed: torch.Tensor  # (vocab, dim)
    norm_weight: torch.Tensor | None = None  # (dim,)
    norm_bias: torch.Tensor | None = None  # (dim,)
    unembed_bias: torch.Tensor | None = None  # (vocab,)

    def chunk_tokens(self, chunk_mib: int, buffers: int) -> int:
        """Tokens per chunk when ``buffers`` (chunk, vocab) float32 matrices must fit in ``chunk_mib`` MiB (and at
        most CHUNK_TOKENS)."""
        return max(1, min(CHUNK_TOKENS, (chunk_mib << 20) // (4 * self.vocab * buffers)))

    @property
    def vocab(self) -> int:
        return int(self.unembed.shape[0])

    @property
    def dim(self) -> int:
        return int(self.unembed.shape[1])

    @classmethod
    def from_arrays(cls, spec: LensSpec, arrays: dict[str, np.ndarray]) -> "Lens":
        """Build from the store's ``lens/`` arrays (any float dtype; upcast to float32 for the readout)."""

        def get(name: str) -> torch.Tensor | None:
            a = arrays.get(name)
            return None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float32))

        return cls(
            spec=spec,
            unembed=get("unembed"),
            norm_weight=get("norm_weight"),
            norm_bias=get("norm_bias"),
            unembed_bias=get("unembed_bias"),
        )

    def normalize(self, h: torch.Tensor) -> torch.Tensor:
        """The final norm, recomputed in float32 (h: (token, dim) -> (token, dim))."""
        x = h.to(torch.float32)
        s = self.spec
        if s.norm == "rms":
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + s.eps)
        elif s.norm == "layer":
            x = x - x.mean(-1, keepdim=True)
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + s.eps)
        if self.norm_weight is not None:
            x = x * (self.norm_weight + s.weight_offset)
        if self.norm_bias is not None:
            x = x + self.norm_bias
        return x

    def logits(self, h: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Lens logits (token, vocab) in float32 for hidden states h (token, dim), written into ``out`` if given."""
        z = torch.matmul(self.normalize(h), self.unembed.T, out=out)  # (token, vocab)
        if self.unembed_bias is not None:
            z.add_(self.unembed_bias)
        if self.spec.logit_scale != 1.0:
            z.mul_(self.spec.logit_scale)
        if self.spec.logit_softcap is not None:
            c = self.spec.logit_softcap
            z.div_(c).tanh_().mul_(c)
        return z

    def log_probs(self, h: torch.Tensor | np.ndarray) -> torch.Tensor:
        """float32 log-softmax of the lens logits (docs/method.md §3: √p = exp(½ log p) downstream); h (token, dim) as a
        tensor or as the numpy rows ``Store.iter_layer`` yields."""
        return torch.log_softmax(self.logits(torch.as_tensor(h)), dim=-1)

    def sqrt_probs(self, h: torch.Tensor, out: torch.Tensor | None = None, rows: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """√p (token, vocab) float32 in one buffer, and log p of the tokens ``rows`` (or None).

        ``√p = r / ‖r‖₂`` with ``r = exp(½ (z − max z))``: the same values as ``exp(½ log_softmax z)``
        (docs/method.md §3) in three in-place passes after the product, with no (token, vocab) temporary.
        """
        z = self.logits(h, out=out)
        top = z.amax(dim=-1, keepdim=True)  # (token, 1)
        z_rows = None if rows is None else z.index_select(0, rows)  # before z is overwritten
        r = z.sub_(top).mul_(0.5).exp_()
        norm = torch.linalg.vector_norm(r, dim=-1, keepdim=True)  # ‖r‖² = Σ exp(z − max)
        logp = None
        if rows is not None:  # log p = z − max − log Σ exp(z − max)
            logp = z_rows.sub_(top.index_select(0, rows) + 2 * torch.log(norm.index_select(0, rows)))
        return r.div_(norm), logp
