"""Independent model calls of one sampling step, run concurrently on CUDA streams.

    MultiGuidance(models, plan, run=run_on_streams)

A step of guidance-decoupled sampling calls the prior and the domain model on the same latents; neither needs the
other's output. At small batch a GPU is not saturated by one UNet call, so issuing the second call on its own stream
lets the two overlap. Off CUDA (or with one call) the calls simply run one after the other, so the results are the
same as the default runner's everywhere; on CUDA the same kernels run, in another interleaving.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["run_on_streams"]

_STREAMS: dict[tuple[int, int], torch.cuda.Stream] = {}  # (device index, slot) -> side stream, reused across steps


def _side_stream(device: int, slot: int) -> torch.cuda.Stream:
    if (device, slot) not in _STREAMS:
        _STREAMS[device, slot] = torch.cuda.Stream(device=device)
    return _STREAMS[device, slot]


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def run_on_streams(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` (thunks returning tensors or sequences of tensors) and return their results in order.

    On CUDA, call 0 runs on the current stream and each other call on a side stream that first waits for the current
    one (so it sees every input); the current stream then waits for the side streams, and each result is recorded as
    used on it (so its memory is not reused early). Elsewhere, the calls run in order.
    """
    if len(calls) < 2 or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return [call() for call in calls]
    main = torch.cuda.current_stream()
    device = torch.cuda.current_device()
    sides = [_side_stream(device, k) for k in range(1, len(calls))]
    results: list[Any] = [None] * len(calls)
    for k, stream in enumerate(sides, start=1):
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            results[k] = calls[k]()
    results[0] = calls[0]()
    for k, stream in enumerate(sides, start=1):
        main.wait_stream(stream)
        for tensor in _tensors(results[k]):
            tensor.record_stream(main)
    return results
