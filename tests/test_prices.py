"""Prices: hosted models by tokens, local GGUFs by the CPU or GPU time they hold, by size class."""

from __future__ import annotations

from pathlib import Path

import pytest

from activities.models.llamacpp import SMOLLM2_NAME, default_model_path
from activities.models.prices import SIZE_CLASSES, Price, local_price, price_of, size_class
from activities.models.router import (
    TYPICAL_REASONER_CALL,
    build_model,
    price_for,
    reasoner_price_estimate,
)
from keel.settings import Settings, SettingsError, settings_from_env

MB = 1_000_000


def gguf(tmp_path: Path, size: int, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    with path.open("wb") as f:
        f.truncate(size)  # sparse: only the size matters
    return path


@pytest.mark.parametrize(
    ("size", "index"),
    [(98 * MB, 0), (300 * MB - 1, 0), (300 * MB, 1), (491 * MB, 1), (1117 * MB, 2), (2 * 10**9, 3)],
)
def test_the_size_class_comes_from_the_file_size(tmp_path: Path, size: int, index: int) -> None:
    assert size_class(gguf(tmp_path, size)) == SIZE_CLASSES[index]


def test_larger_classes_are_slower_on_both_kinds_of_hardware() -> None:
    for small, large in zip(SIZE_CLASSES, SIZE_CLASSES[1:], strict=False):
        assert small.below_bytes < large.below_bytes
        assert small.cpu_prefill > large.cpu_prefill and small.cpu_decode > large.cpu_decode
        assert small.gpu_prefill > large.gpu_prefill and small.gpu_decode > large.gpu_decode


def test_cpu_is_billed_per_thread_at_the_vcpu_rate_and_gpu_at_the_gpu_rate(
    tmp_path: Path,
) -> None:
    path = gguf(tmp_path, 491 * MB)
    cls = size_class(path)
    settings = Settings(llamacpp_threads=2, local_cpu_usd_per_hour=0.05)

    cpu = local_price(path, gpu=False, settings=settings)
    assert cpu.usd_per_hour == pytest.approx(0.10)  # 2 vCPUs
    assert (cpu.prefill_tokens_per_s, cpu.decode_tokens_per_s) == (
        2 * cls.cpu_prefill,
        2 * cls.cpu_decode,
    )
    gpu = local_price(path, gpu=True, settings=settings)
    assert gpu.usd_per_hour == 2.50  # the default GPU rate
    assert (gpu.prefill_tokens_per_s, gpu.decode_tokens_per_s) == (cls.gpu_prefill, cls.gpu_decode)
    # More threads: a dearer hour, proportionally faster, so the same expected cost.
    four = local_price(
        path, gpu=False, settings=settings.model_copy(update={"llamacpp_threads": 4})
    )
    assert four.estimate(600, 120) == pytest.approx(cpu.estimate(600, 120))


def test_the_default_budget_buys_many_local_plans_on_cpu(tmp_path: Path) -> None:
    """The point of CPU pricing: a plan-sized call ($0.05 is the default task budget) on the
    0.5B model costs a small fraction of it, not most of it as at the GPU rate."""
    price = local_price(gguf(tmp_path, 491 * MB), gpu=False, settings=Settings())
    assert price.estimate(600, 120) < 0.05 / 50


def test_estimate_before_the_call_and_actual_after_it(tmp_path: Path) -> None:
    price = Price(usd_per_hour=3.6, prefill_tokens_per_s=600, decode_tokens_per_s=60)
    assert price.expected_seconds(600, 120) == pytest.approx(3.0)
    assert price.estimate(600, 120) == pytest.approx(3.0 * 0.001)  # $3.6/h = $0.001/s
    assert price.actual(600, 120, seconds=7.5) == pytest.approx(7.5 * 0.001)  # measured time
    assert price.output_tokens_for(0.001) == pytest.approx(60)  # one second of decoding
    hosted = Price(2.50, 10.00)
    assert hosted.actual(1000, 100, seconds=99) == hosted.estimate(1000, 100) == 0.0035


def test_rates_and_throughputs_are_configured_by_environment(tmp_path: Path) -> None:
    path = gguf(tmp_path, 98 * MB)
    settings = settings_from_env(
        {
            "KEEL_LOCAL_CPU_USD_PER_HOUR": "0.2",
            "KEEL_LOCAL_GPU_USD_PER_HOUR": "4",
            "KEEL_LLAMACPP_THREADS": "3",
            "KEEL_LOCAL_PREFILL_TOKENS_PER_S": "500",
            "KEEL_LOCAL_DECODE_TOKENS_PER_S": "50",
        }
    )
    cpu = local_price(path, gpu=False, settings=settings)
    assert cpu == Price(
        usd_per_hour=pytest.approx(0.6), prefill_tokens_per_s=500, decode_tokens_per_s=50
    )
    assert local_price(path, gpu=True, settings=settings).usd_per_hour == 4.0
    with pytest.raises(SettingsError, match=r"^KEEL_LOCAL_CPU_USD_PER_HOUR='-1' is invalid"):
        settings_from_env({"KEEL_LOCAL_CPU_USD_PER_HOUR": "-1"})


def test_a_zero_rate_makes_local_calls_free(tmp_path: Path) -> None:
    price = local_price(
        gguf(tmp_path, 98 * MB), gpu=False, settings=Settings(local_cpu_usd_per_hour=0)
    )
    assert price.estimate(600, 120) == price.actual(600, 120, seconds=30) == 0
    assert price.output_tokens_for(0.0) == float("inf")


def test_hosted_token_prices_are_unchanged() -> None:
    assert price_of("gpt-4o") == Price(2.50, 10.00)
    assert price_of("claude-haiku-4-5") == Price(1.00, 5.00)
    with pytest.raises(KeyError, match="no price for model 'gpt-9'"):
        price_of("gpt-9")


def test_a_local_gguf_is_priced_by_its_name_at_the_cpu_rate(tmp_path: Path) -> None:
    settings = Settings(local_model=str(gguf(tmp_path, 1117 * MB, "My-Model.Q4.gguf")))
    assert price_of("my-model.q4", settings) == local_price(
        tmp_path / "My-Model.Q4.gguf", gpu=False, settings=settings
    )
    assert price_of(SMOLLM2_NAME, settings) == local_price(
        default_model_path(), gpu=False, settings=settings
    )


def test_the_backend_decides_cpu_or_gpu_time(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, llamacpp_threads=1)
    on_cpu = build_model("llamacpp", settings)
    on_gpu = build_model("triton", settings)
    assert on_cpu.name == on_gpu.name == SMOLLM2_NAME
    assert price_for(on_cpu) == price_of(SMOLLM2_NAME, settings)
    assert price_for(on_gpu) == local_price(default_model_path(), gpu=True, settings=settings)
    assert price_for(on_gpu).usd_per_hour > 20 * price_for(on_cpu).usd_per_hour
    assert reasoner_price_estimate(
        settings.model_copy(update={"reasoner_model": "triton"})
    ) == pytest.approx(price_for(on_gpu).estimate(*TYPICAL_REASONER_CALL))
    assert reasoner_price_estimate(settings) == pytest.approx(
        price_for(on_cpu).estimate(*TYPICAL_REASONER_CALL)
    )
