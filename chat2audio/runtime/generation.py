"""Stopping a transformers `generate()` call from outside its thread."""

from __future__ import annotations

import threading
from typing import Any


def stop_when_set(cancelled: threading.Event) -> Any:
    """A `stopping_criteria` list that ends generation at the next step once `cancelled` is set
    (the client hung up): without it `generate()` runs to `max_new_tokens` for nobody."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenCancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
            return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhenCancelled()])
