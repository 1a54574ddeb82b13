"""KEEL_LOCAL_MODEL: small, medium, large or a .gguf path, resolved without loading a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from activities.models.llamacpp import (
    NAMED_GGUFS,
    SMOLLM2_NAME,
    gguf_named,
    local_model_path,
    model_name,
)
from activities.models.router import backend_model_name
from keel.settings import Settings, SettingsError, settings_from_env


def installed(models: Path, choice: str) -> Path:
    path = models / NAMED_GGUFS[choice][0]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF")
    return path


def test_small_is_the_default_smollm2() -> None:
    settings = settings_from_env({})
    assert settings.local_model == "small"
    assert local_model_path(settings) is None
    assert backend_model_name("llamacpp", settings) == SMOLLM2_NAME


@pytest.mark.parametrize("choice", ["medium", "large"])
def test_a_named_model_is_its_file_in_the_models_folder(tmp_path: Path, choice: str) -> None:
    path = installed(tmp_path, choice)
    settings = settings_from_env({"KEEL_LOCAL_MODEL": choice, "KEEL_MODELS": str(tmp_path)})
    assert local_model_path(settings) == path
    assert backend_model_name("triton", settings) == model_name(path) == path.stem
    assert gguf_named(path.stem, settings) == path


@pytest.mark.parametrize("choice", ["medium", "large"])
def test_a_named_model_not_installed_says_which_make_target_installs_it(
    tmp_path: Path, choice: str
) -> None:
    settings = Settings(local_model=choice, models_dir=tmp_path)
    with pytest.raises(SettingsError) as raised:
        local_model_path(settings)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"KEEL_LOCAL_MODEL={choice} is not installed")
    assert message.endswith(f"run `make model-{choice}`")


def test_any_gguf_path(tmp_path: Path) -> None:
    path = tmp_path / "Phi-Mini.Q4_K_M.gguf"
    path.write_bytes(b"GGUF")
    settings = settings_from_env({"KEEL_LOCAL_MODEL": str(path)})
    assert local_model_path(settings) == path
    assert backend_model_name("llamacpp", settings) == "phi-mini.q4_k_m"
    assert gguf_named("phi-mini.q4_k_m", settings) == path
    assert gguf_named("no-such-model", settings) is None


def test_a_missing_gguf_path_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "gone.gguf"
    with pytest.raises(SettingsError, match=f"^KEEL_LOCAL_MODEL={missing}: no such file$"):
        local_model_path(Settings(local_model=str(missing)))


def test_the_explicit_path_overrides_the_choice(tmp_path: Path) -> None:
    path = tmp_path / "explicit.gguf"
    path.write_bytes(b"GGUF")
    settings = settings_from_env(
        {"KEEL_LOCAL_MODEL": "medium", "KEEL_LLAMACPP_MODEL_PATH": str(path)}
    )
    assert local_model_path(settings) == path  # medium is not installed: never looked at
    with pytest.raises(SettingsError, match="^KEEL_LLAMACPP_MODEL_PATH=.*: no such file$"):
        local_model_path(Settings(llamacpp_model_path=tmp_path / "gone.gguf"))


@pytest.mark.parametrize("value", ["huge", "SMALL", "model.bin"])
def test_a_bad_value_is_one_line(value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        settings_from_env({"KEEL_LOCAL_MODEL": value})
    assert str(raised.value) == (
        f"KEEL_LOCAL_MODEL={value!r} is invalid: "
        "use small, medium, large or the path of a .gguf file"
    )
