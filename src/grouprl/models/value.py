"""The value model (critic) of critic-based PPO: V(s_t), the value of the state before each response
token, for GAE's δ_t = r_t + γ·V(s_{t+1}) − V(s_t) (GAE, arXiv:1506.02438, Section 3) and T-PPO's EGAE
(arXiv:2506.15050). It is regressed on the returns of ``grouprl.advantages.value_targets`` with
``grouprl.losses.value_loss`` (GAE, arXiv:1506.02438, Section 5: value function estimation).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

__all__ = ["ValueModel"]


class ValueModel(torch.nn.Module):
    """A critic: a copy of the policy's transformer body with a scalar head on its last hidden state.

    ``forward(prompt_ids, prompt_mask, response_ids, response_mask)`` -> V float32 (N, T): the value
    of the state before each response token (the position whose logits predict it), 0 on padding.
    Prompts are left-padded (N, P), responses right-padded (N, T); the masks are bool. The head
    starts at zero (V = 0 everywhere before the first update); it is built on the policy's device.
    """

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.body = copy.deepcopy(getattr(policy, "base_model", policy))
        hidden = int(policy.config.hidden_size)
        self.head = torch.nn.Linear(hidden, 1, device=next(policy.parameters()).device)  # beside the body (CUDA too)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor) -> Tensor:
        if prompt_ids.shape != prompt_mask.shape or response_ids.shape != response_mask.shape \
                or prompt_ids.shape[0] != response_ids.shape[0] or prompt_ids.dim() != 2:
            raise ValueError(
                f"ValueModel: prompt_ids {tuple(prompt_ids.shape)} / prompt_mask {tuple(prompt_mask.shape)} must be "
                f"(N, P) and response_ids {tuple(response_ids.shape)} / response_mask {tuple(response_mask.shape)} "
                "(N, T), with the same N rows."
            )
        P = prompt_ids.shape[1]
        ids = torch.cat([prompt_ids, response_ids], dim=1)
        attn = torch.cat([prompt_mask, response_mask], dim=1)
        pos = (attn.long().cumsum(dim=1) - 1).clamp(min=0)
        h = self.body(input_ids=ids, attention_mask=attn.long(), position_ids=pos).last_hidden_state
        v = self.head(h[:, P - 1 : -1, :].float()).squeeze(-1)
        return v.masked_fill(~response_mask, 0.0)
