"""Start-up self-checks on a probe batch: hooks equal ``output_hidden_states``, the stored lens equals the model's logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spinal.capture.discover import Anatomy
from spinal.capture.hooks import Recorder
from spinal.errors import IntegrityError, ModelError
from spinal.lens import Lens

# Tolerance of the lens check, relative to max |logit|: a float32 recomputation agrees to
# ~1e-6; in bf16/fp16 the model rounds the normed state and the logits (2⁻⁸ relative), the
# lens does not, so ~1e-2 differences are expected. A wrong spec (missing soft-cap, offset,
# bias) is off by O(1).
_LENS_RTOL = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}


@dataclass(frozen=True)
class SelfCheck:
    hidden_max_abs_diff: float
    last_entry: str  # "final-normed" or "raw": what HF's hidden_states[-1] is for this family
    lens_max_abs_diff: float
    lens_rel_diff: float
    lens_top1_agreement: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _check_finite(got: dict[int, torch.Tensor], flat: torch.Tensor, seq_len: int, arch: str) -> None:
    """Refuse a probe whose captured states hold NaN/inf, naming the first layer, sequence and position."""
    for i, h in sorted(got.items()):
        finite = torch.isfinite(h).all(-1)
        if not finite.all():
            row = int(flat[int(torch.nonzero(~finite)[0, 0])])
            b, p = divmod(row, seq_len)
            raise IntegrityError(
                f"{arch}: non-finite activation at layer {i}, probe sequence {b} position {p}; "
                "nothing was written. Try --dtype float32"
            )


@torch.no_grad()
def run_self_check(model, anatomy: Anatomy, lens: Lens, input_ids, attention_mask, dtype: str) -> SelfCheck:
    """input_ids/attention_mask: a right-padded probe batch (batch, seq) on the model's input device.

    One function, a little past 60 lines: the hooks, ``output_hidden_states`` and the lens are all read off the one
    forward pass, and each comparison uses the tensors the one before it moved to the CPU."""
    arch = anatomy.arch
    dim = lens.dim
    flat = torch.nonzero(attention_mask.reshape(-1).cpu(), as_tuple=True)[0]  # valid (batch·seq) positions
    layers = list(range(anatomy.n_layers))
    with Recorder(anatomy.blocks, layers, dim, arch) as rec:
        rec.gather(flat)
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        got = {k: v.to("cpu") for k, v in rec.out.items()}
    hs = out.hidden_states
    if hs is None or len(hs) != anatomy.n_layers:
        raise ModelError(
            f"{arch}: output_hidden_states gave {None if hs is None else len(hs)} entries, expected "
            f"{anatomy.n_layers} (embedding + {anatomy.n_layers - 1} blocks); self-check impossible"
        )

    _check_finite(got, flat, input_ids.shape[1], arch)

    def ref(i: int) -> torch.Tensor:
        return hs[i].reshape(-1, dim).to("cpu").index_select(0, flat)  # (token, dim)

    worst = 0.0
    for i in layers[:-1]:
        if got[i].shape != ref(i).shape or not torch.equal(got[i], ref(i)):
            d = (got[i].float() - ref(i).float()).abs().max().item() if got[i].shape == ref(i).shape else float("nan")
            raise ModelError(
                f"{arch}: self-check failed: captured layer {i} differs from output_hidden_states[{i}] "
                f"(max |Δ| = {d:.3g}); refusing to write a wrong store"
            )
    last = anatomy.n_layers - 1
    if torch.equal(got[last], ref(last)):
        last_entry = "raw"
    else:
        normed = anatomy.final_norm(got[last].to(hs[last].device)).to("cpu")
        worst = (normed.float() - ref(last).float()).abs().max().item()
        scale = ref(last).float().abs().max().item()
        # The model's own final norm applied to the captured state is the same module on the same input as
        # hidden_states[-1] (the last layer is stored before the final norm, docs/method.md §1): on CPU they agree
        # bit for bit (max |Δ| 0.0 in all eight test architectures, float32 and bfloat16). 1e-5 of max |h| leaves
        # room for a kernel that rounds differently; an entry that is not this norm of this state is off by O(1).
        if worst > 1e-5 * max(scale, 1.0):
            raise ModelError(
                f"{arch}: self-check failed: block {last} output matches neither output_hidden_states[-1] nor "
                f"its final norm (max |Δ| = {worst:.3g}); refusing to write a wrong store"
            )
        last_entry = "final-normed"
    model_logits = out.logits.reshape(-1, out.logits.shape[-1]).to("cpu").index_select(0, flat).float()
    lens_logits = lens.logits(got[last])
    diff = (lens_logits - model_logits).abs().max().item()
    scale = model_logits.abs().max().item()
    rel = diff / max(scale, 1e-12)
    agree = (lens_logits.argmax(-1) == model_logits.argmax(-1)).float().mean().item()
    if rel > _LENS_RTOL[dtype]:
        raise ModelError(
            f"{arch}: self-check failed: the stored lens does not reproduce the model's logits "
            f"(max |Δ| = {diff:.3g}, {rel:.2%} of max |logit|; top-1 agreement {agree:.1%}); lens spec "
            f"{lens.spec.to_dict()} is wrong for this architecture"
        )
    return SelfCheck(worst, last_entry, diff, rel, agree)
