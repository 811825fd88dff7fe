"""Batched classifier-free guidance for pipelines that run the two passes one after the other.

WanPipeline calls the transformer twice per step, first with the prompt's embeddings ("cond"),
then with the negative prompt's ("uncond"), on the same latents and timestep. While active,
`BatchedCfg` turns the first call into one batch-2 call over both embeddings, returns the cond
half and keeps the uncond half for the second call, which then costs nothing. One call of
batch 2 moves the weights once and launches half the kernels.

It recognises the two calls by identity: the cond call carries exactly the prompt-embedding
tensor the engine passed in, the uncond call the same latents and timestep objects with exactly
the negative tensor. Any other call runs unchanged, so a pipeline that calls the transformer
differently stays correct (only unbatched).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass
class _Pending:
    hidden_states: Any
    timestep: Any
    uncond: Any


class BatchedCfg:
    """Patches one transformer's `forward` while a generation runs (see the module docstring)."""

    def __init__(self, transformer: Any) -> None:
        self.transformer = transformer
        self.batched_calls = 0
        self._forward: Any = None
        self._cond: Any = None
        self._uncond: Any = None
        self._joint: Any = None
        self._pending: _Pending | None = None

    @contextmanager
    def active(self, cond: Any, uncond: Any) -> Iterator[None]:
        """Batch the passes that use `cond` and `uncond` (same shapes) inside this block."""
        import torch

        module = self.transformer
        previous = module.__dict__.get("forward")
        self._forward = module.forward
        self._cond, self._uncond = cond, uncond
        self._joint = torch.cat([cond, uncond])
        module.forward = self._call
        try:
            yield
        finally:
            if module.__dict__.get("forward") == self._call:
                if previous is None:
                    del module.forward
                else:
                    module.forward = previous
            self._forward = self._cond = self._uncond = self._joint = None
            self._pending = None

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        import torch

        hidden = kwargs.get("hidden_states")
        embeds = kwargs.get("encoder_hidden_states")
        timestep = kwargs.get("timestep")
        pending, self._pending = self._pending, None
        if (
            pending is not None
            and hidden is pending.hidden_states
            and timestep is pending.timestep
            and embeds is self._uncond
        ):
            return self._result(pending.uncond, kwargs.get("return_dict", True))
        if args or hidden is None or timestep is None or embeds is not self._cond:
            return self._forward(*args, **kwargs)

        batch = dict(kwargs)
        batch["hidden_states"] = torch.cat([hidden, hidden])
        batch["timestep"] = torch.cat([timestep, timestep])
        batch["encoder_hidden_states"] = self._joint
        image = kwargs.get("encoder_hidden_states_image")
        if image is not None:
            batch["encoder_hidden_states_image"] = torch.cat([image, image])
        batch["return_dict"] = False
        cond_out, uncond_out = self._forward(**batch)[0].chunk(2)
        self._pending = _Pending(hidden, timestep, uncond_out)
        self.batched_calls += 1
        return self._result(cond_out, kwargs.get("return_dict", True))

    @staticmethod
    def _result(sample: Any, return_dict: bool) -> Any:
        if not return_dict:
            return (sample,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)
