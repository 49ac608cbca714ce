"""What the planner's memory model is checked against (tests/plan, bench/): the peak of torch's CPU
allocations while a function runs. torch is imported here only, when called; the planner itself
stays plain Python."""

from __future__ import annotations


def peak_allocated(fn) -> int:
    """Peak of the running sum of torch's CPU allocations (bytes) while fn() runs, from its start:
    the profiler's memory events in time order (allocations positive, frees negative)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak
