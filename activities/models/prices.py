"""What model calls cost: USD per million tokens for hosted models, machine time for local ones.

Hosted models bill tokens. A local GGUF model costs the machine time a call holds: CPU time
when llama.cpp serves it here (`llamacpp`: the call's seconds times its threads, at a vCPU
rate), GPU time when Triton serves it on a GPU worker (`triton`: the call's seconds at a GPU
rate). Before a call, its time is estimated from the throughput a model of that file size is
expected to reach on that hardware, so that the router can cap the call to what the budget
allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from keel.settings import Settings, get_settings


@dataclass(frozen=True)
class Price:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    # Local models: billed by the time they hold their hardware (all of it: every CPU thread,
    # or the GPU); the throughputs turn tokens into expected seconds.
    usd_per_hour: float = 0.0
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0

    @property
    def by_time(self) -> bool:
        return self.usd_per_hour > 0

    def expected_seconds(self, input_tokens: int, output_tokens: int) -> float:
        return input_tokens / self.prefill_tokens_per_s + output_tokens / self.decode_tokens_per_s

    def estimate(self, input_tokens: int, output_tokens: int) -> float:
        """USD expected before the call."""
        if self.by_time:
            return self.expected_seconds(input_tokens, output_tokens) * self.usd_per_hour / 3600
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6

    def output_tokens_for(self, usd: float) -> float:
        """How many output tokens `usd` pays for (after the input is paid)."""
        if self.by_time:
            return usd * 3600 / self.usd_per_hour * self.decode_tokens_per_s
        if self.output_per_mtok <= 0:
            return float("inf")
        return usd * 1e6 / self.output_per_mtok

    def actual(self, input_tokens: int, output_tokens: int, seconds: float) -> float:
        """USD of a finished call: tokens for hosted models, measured time for local ones."""
        if self.by_time:
            return seconds * self.usd_per_hour / 3600
        return self.estimate(input_tokens, output_tokens)


@dataclass(frozen=True)
class SizeClass:
    """The throughput expected of a GGUF file smaller than `below_bytes`. CPU: tokens/s per
    llama.cpp thread (the portable AVX2 build; llama.cpp's own prompt and decode timings with
    2 threads on an idle 2-vCPU machine, halved); GPU: tokens/s on one H100, assumed (no GPU
    was available to measure them: replace them with what `bench/triton.py` measures there)."""

    below_bytes: float
    cpu_prefill: float
    cpu_decode: float
    gpu_prefill: float
    gpu_decode: float


# Q4 GGUFs: <300 MB ~ 135M-360M parameters (SmolLM2-135M: 98 MB), <700 MB ~ 0.5B
# (Qwen2.5-Coder-0.5B: 491 MB), <1.5 GB ~ 1.5B (Qwen2.5-Coder-1.5B: 1.1 GB), measured on a
# ~700-token prompt and 120 output tokens; larger ~ 3B and up, extrapolated (half of 1.5B's).
SIZE_CLASSES = (
    SizeClass(300e6, cpu_prefill=170, cpu_decode=40, gpu_prefill=4000, gpu_decode=250),
    SizeClass(700e6, cpu_prefill=90, cpu_decode=25, gpu_prefill=3000, gpu_decode=200),
    SizeClass(1.5e9, cpu_prefill=38, cpu_decode=14, gpu_prefill=2000, gpu_decode=150),
    SizeClass(float("inf"), cpu_prefill=18, cpu_decode=7, gpu_prefill=1000, gpu_decode=80),
)


def size_class(path: Path) -> SizeClass:
    size = path.stat().st_size
    return next(c for c in SIZE_CLASSES if size < c.below_bytes)


def local_price(path: Path, gpu: bool, settings: Settings) -> Price:
    """The GGUF at `path` served on a GPU (Triton) or by llama.cpp on this CPU with
    `settings.llamacpp_threads` threads; configured throughputs replace the size class's."""
    cls = size_class(path)
    if gpu:
        rate, prefill, decode = settings.local_gpu_usd_per_hour, cls.gpu_prefill, cls.gpu_decode
    else:
        threads = settings.llamacpp_threads
        rate = settings.local_cpu_usd_per_hour * threads
        prefill, decode = cls.cpu_prefill * threads, cls.cpu_decode * threads
    return Price(
        usd_per_hour=rate,
        prefill_tokens_per_s=settings.local_prefill_tokens_per_s or prefill,
        decode_tokens_per_s=settings.local_decode_tokens_per_s or decode,
    )


PRICES: dict[str, Price] = {
    "scripted": Price(1.0, 2.0),
    "scripted-large": Price(3.0, 15.0),  # the scripted model standing in for a large one
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4.1": Price(2.00, 8.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-sonnet-4-5": Price(3.00, 15.00),
    "claude-haiku-4-5": Price(1.00, 5.00),
}


def price_of(model: str, settings: Settings | None = None) -> Price:
    """A hosted model's token price, or a local GGUF's CPU-time price by its model name (the
    file's stem; also when an OpenAI-compatible llama.cpp server serves it by that name)."""
    if model in PRICES:
        return PRICES[model]
    from activities.models.llamacpp import gguf_named  # late: it loads the OpenAI client

    settings = settings or get_settings()
    path = gguf_named(model, settings)
    if path is None:
        raise KeyError(f"no price for model {model!r}: add it to activities/models/prices.py")
    return local_price(path, gpu=False, settings=settings)
