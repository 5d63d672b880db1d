"""The DPO loss (Rafailov et al. 2023, "Direct Preference Optimization") as an objective for the one trainer.

For a prompt x with a chosen answer y_w and a rejected one y_l, the policy π (the model being tuned) and the
frozen reference π_ref (the model it started from):

    r(y)  = β · (log π(y|x) − log π_ref(y|x))          the implicit reward, log-probabilities summed over the
                                                      answer's tokens (and its end-of-turn token)
    loss  = −log σ(r(y_w) − r(y_l))                   ln 2 ≈ 0.693 while π equals π_ref
          + α · NLL(y_w)                              with rpo_alpha α > 0 (RPO, Pang et al. 2024; TRL's
                                                      `rpo_alpha`): the chosen answers' mean next-token loss

Why the NLL term: the DPO loss only asks the chosen answer to gain on the rejected one relative to the reference,
and both can fall while the margin grows. On the demo's review pairs that is what plain DPO does: the held-out
chosen negative reviews lose 17 nats each, and the tuned model answers 写一条差评 with complaints of 15 characters
on average ("晕！", "郁闷!") instead of reviews (the chat run's: 31). The NLL term keeps the chosen answers likely.

Logged on held-out pairs, as TRL names them: the rewards of both sides, their margin r(y_w) − r(y_l), the
preference accuracy (share of pairs whose chosen answer has the larger reward; 0 while π equals π_ref, as TRL
counts ties), and the KL divergence of π from π_ref, KL(π‖π_ref) over the whole vocabulary at every answer
position, in nats per answer token: how far the tuning has moved the model (0 at the start).

The reference: with LoRA it is the same model with its adapters switched off (goushi.lora.adapters_off), so no
second copy of the weights is held; without LoRA, a frozen copy of the starting run's weights, read from disk
(so a resumed run compares against exactly the same reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from goushi import lora
from goushi.checkpoint import load_run
from goushi.model import IGNORE_INDEX
from goushi.train.source import Batch

ADAPTERS_OFF = "the starting run's weights, as LoRA's adapters switched off"


def frozen_copy_name(run_dir: str | Path) -> str:
    return f"a frozen copy of {Path(run_dir).resolve()}'s weights"


def answer_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row, the sum over its targets (those not IGNORE_INDEX) of log p(target), in float32. Only the target
    positions' logits go through the softmax."""
    valid = targets != IGNORE_INDEX
    rows = valid.nonzero()[:, 0]
    logp = logits[valid].float().log_softmax(-1).gather(1, targets[valid].unsqueeze(1)).squeeze(1)
    return torch.zeros(targets.size(0), dtype=torch.float32, device=logits.device).index_add(0, rows, logp)


def dpo_terms(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
    """(loss per pair, chosen rewards, rejected rewards) from the answer log-probabilities of a batch whose rows
    alternate chosen, rejected (goushi.sft.prefs)."""
    pc, pr = policy.view(-1, 2).unbind(1)
    rc, rr = reference.view(-1, 2).unbind(1)
    chosen, rejected = beta * (pc - rc), beta * (pr - rr)
    return -F.logsigmoid(chosen - rejected), chosen, rejected


class Reference:
    """The frozen reference model's logits: LoRA's adapters off (`run_dir` None), or a copy of a run's weights."""

    def __init__(self, run_dir: str | Path | None = None):
        self.run_dir = run_dir
        self.copy: nn.Module | None = None
        self.name = ADAPTERS_OFF if run_dir is None else frozen_copy_name(run_dir)

    @torch.no_grad()
    def logits(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.run_dir is None:
            with lora.adapters_off(model):
                return model(x)[0]
        if self.copy is None:
            self.copy = load_run(self.run_dir, device=x.device).model
            for m in self.copy.parameters():
                m.requires_grad_(False)
            for mine, theirs in zip(self.copy.modules(), model.modules(), strict=False):
                if hasattr(theirs, "attn_dtype"):  # attention in the trained model's precision (goushi.precision)
                    mine.attn_dtype = theirs.attn_dtype
        return self.copy(x)[0]


def chosen_tokens(targets: torch.Tensor) -> int:
    """Answer tokens of the chosen rows (even rows) of a batch: what the NLL term averages over."""
    return int((targets[0::2] != IGNORE_INDEX).sum())


# What eval_sums adds up, in order.
_SUMS = ("pairs", "loss", "reward_chosen", "reward_rejected", "correct", "logp_chosen", "logp_rejected", "kl",
         "kl_tokens", "chosen_tokens")


class DpoObjective:
    """goushi.train.objective.Objective: the DPO loss against `reference`, and its held-out metrics."""

    def __init__(self, beta: float, reference: Reference, rpo_alpha: float = 0.0):
        if not beta > 0:
            raise ValueError(f"beta={beta}: must be > 0")
        if not rpo_alpha >= 0:
            raise ValueError(f"rpo_alpha={rpo_alpha}: must be >= 0")
        self.beta, self.reference, self.rpo_alpha = beta, reference, rpo_alpha

    def loss(self, model: nn.Module, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        policy = answer_logps(net(x)[0], y)
        ref = answer_logps(self.reference.logits(model, x), y)
        losses, _, _ = dpo_terms(policy, ref, self.beta)
        loss = losses.mean()
        if self.rpo_alpha:  # per token, as TRL's nll_loss: long and short answers weigh as their tokens do
            loss = loss - self.rpo_alpha * policy[0::2].sum() / max(chosen_tokens(y), 1)
        return loss

    def eval_sums(self, model: nn.Module, batches: Iterator[Batch], autocast: Callable[[], AbstractContextManager],
                  device: torch.device) -> list[float]:
        sums = dict.fromkeys(_SUMS, 0.0)
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with autocast():
                logits, ref_logits = model(x)[0], self.reference.logits(model, x)
            policy, ref = answer_logps(logits, y), answer_logps(ref_logits, y)
            losses, chosen, rejected = dpo_terms(policy, ref, self.beta)
            valid = y != IGNORE_INDEX
            lp, lr = logits[valid].float().log_softmax(-1), ref_logits[valid].float().log_softmax(-1)
            for k, v in (("pairs", losses.numel()), ("loss", losses.sum()), ("reward_chosen", chosen.sum()),
                         ("reward_rejected", rejected.sum()), ("correct", (chosen > rejected).sum()),
                         ("logp_chosen", policy[0::2].sum()), ("logp_rejected", policy[1::2].sum()),
                         ("kl", (lp.exp() * (lp - lr)).sum()), ("kl_tokens", int(valid.sum())),
                         ("chosen_tokens", chosen_tokens(y))):
                sums[k] += float(v)
        return [sums[k] for k in _SUMS]

    def eval_record(self, totals: list[float]) -> dict[str, float]:
        s = dict(zip(_SUMS, totals, strict=True))
        n = max(s["pairs"], 1.0)
        chosen, rejected = s["reward_chosen"] / n, s["reward_rejected"] / n
        nll = -s["logp_chosen"] / max(s["chosen_tokens"], 1.0)
        dpo = s["loss"] / n if s["pairs"] else math.nan
        # val_loss decides the best step, so it is what training minimises: the DPO loss plus the NLL term.
        return {"val_loss": dpo + self.rpo_alpha * nll, "val_dpo_loss": dpo, "val_nll_chosen": nll,
                "val_reward_chosen": chosen,
                "val_reward_rejected": rejected, "val_reward_margin": chosen - rejected,
                "val_pref_accuracy": s["correct"] / n, "val_kl": s["kl"] / max(s["kl_tokens"], 1.0),
                "val_logp_chosen": s["logp_chosen"] / n, "val_logp_rejected": s["logp_rejected"] / n}

    def describe(self, rec: dict[str, Any]) -> str:
        rpo = (f" + {self.rpo_alpha:g} x chosen NLL {rec['val_nll_chosen']:.3f} = {rec['val_loss']:.4f}"
               if self.rpo_alpha else "")
        return (f"val DPO loss {rec['val_dpo_loss']:.4f}{rpo}, reward margin {rec['val_reward_margin']:+.3f}, preference "
                f"accuracy {rec['val_pref_accuracy']:.1%}, KL to the reference {rec['val_kl']:.4f} nats/token")

    def summary(self, rec: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"dpo_beta": self.beta, "reference": self.reference.name}
        if self.rpo_alpha:
            out["rpo_alpha"] = self.rpo_alpha
        for k in ("val_reward_margin", "val_pref_accuracy", "val_kl", "val_nll_chosen"):
            if k in rec:
                out[f"final_{k}"] = rec[k]
        return out


__all__ = ["answer_logps", "dpo_terms", "chosen_tokens", "Reference", "DpoObjective", "ADAPTERS_OFF", "frozen_copy_name"]
