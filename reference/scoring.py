"""Tokenize dialogues and score responses: summed log-probabilities of response tokens under a causal LM."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Encoded:
    """One dialogue as ids: [BOS] prompt response [EOS]; `start` = index of the first response token."""

    ids: tuple[int, ...]
    start: int


def encode(tokenizer, prompt: str, response: str) -> Encoded:
    """Prompt and response tokenized separately (the boundary is exact), EOS appended to the response."""
    backend = tokenizer.backend_tokenizer
    head = backend.encode(prompt, add_special_tokens=True).ids  # post-processor prepends BOS
    tail = backend.encode(response, add_special_tokens=False).ids
    return Encoded(tuple(head + tail + [tokenizer.eos_token_id]), len(head))


def pad(batch: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (ids, attention mask, response mask), each (sequence, position)."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    resp = torch.zeros((len(batch), width), dtype=torch.bool)
    for i, e in enumerate(batch):
        ids[i, : len(e.ids)] = torch.tensor(e.ids)
        attn[i, : len(e.ids)] = 1
        resp[i, e.start : len(e.ids)] = True
    return ids, attn, resp


def token_logps(model, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t] | ids[:, <t]) for t ≥ 1, shape (sequence, position − 1).

    log_softmax in float32 (the model runs in float32 here; the upcast is a no-op then, and a
    guard for anyone who runs it in bf16: summing bf16 log-probs over ~60 tokens loses the sign
    of small reward margins).
    """
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]  # (sequence, position-1, vocab)
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (sequence, position-1)


def response_logps(model, batch: list[Encoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob of each response incl. EOS, number of response tokens), each (sequence,)."""
    ids, attn, resp = pad(batch, pad_id)
    mask = resp[:, 1:].float()  # target t is scored by the prediction at t-1
    lp = token_logps(model, ids, attn)
    return (lp * mask).sum(-1), mask.sum(-1)


def lm_loss(model, batch: list[Encoded], pad_id: int) -> torch.Tensor:
    """Mean next-token NLL over response tokens (SFT: the prompt is context, not a target)."""
    lp, n = response_logps(model, batch, pad_id)
    return -(lp.sum() / n.sum())


def dpo_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO loss (Rafailov et al. 2023), per pair of chosen y_w and rejected y_l:

        −log σ(β[(log πθ(y_w) − log π_ref(y_w)) − (log πθ(y_l) − log π_ref(y_l))])

    Returns (mean loss, per-pair reward margin β·Δ). Written by hand instead of TRL's DPOTrainer:
    see README.md ("Why not TRL").
    """
    margin = beta * ((policy_w - ref_w) - (policy_l - ref_l))  # (pair,)
    return -F.logsigmoid(margin).mean(), margin.detach()
