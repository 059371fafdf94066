"""Floor 4: sampling responses from a model (KV-cached, batched) and teacher-forced log-probs."""

from __future__ import annotations

from .generation import Generation, pad_left, pad_right
from .sampling import left_pad, response_logprobs, sample, top_p_filter

__all__ = ["Generation", "sample", "response_logprobs", "left_pad", "top_p_filter", "pad_left", "pad_right"]
