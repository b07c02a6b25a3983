from __future__ import annotations

from pathlib import Path

import pytest

from server.cli import build_parser
from server.config import Settings


def test_defaults() -> None:
    settings = Settings.load({}, environ={})
    assert (settings.host, settings.port, settings.model) == ("127.0.0.1", 8000, None)
    assert settings.data_dir == Path("data") and settings.models_dir == Path("models")
    assert settings.database_path == Path("data/darkroom.sqlite3")


def test_env_is_read_and_flags_win() -> None:
    environ = {
        "DARKROOM_PORT": "9000",
        "DARKROOM_MODEL": "tiny",
        "DARKROOM_DATA_DIR": "/srv/d",
        "DARKROOM_URL_TTL_HOURS": "48",
    }
    settings = Settings.load({"port": 9100, "host": None}, environ=environ)
    assert settings.port == 9100 and settings.host == "127.0.0.1"
    assert settings.model == "tiny" and settings.data_dir == Path("/srv/d")
    assert settings.url_ttl_hours == 48.0


def test_bad_env_number_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="DARKROOM_PORT='eighty' is not a valid number"):
        Settings.load({}, environ={"DARKROOM_PORT": "eighty"})


def test_serve_flags_map_onto_settings() -> None:
    args = build_parser().parse_args(
        ["serve", "--port", "8080", "--data-dir", "/tmp/x", "--models-dir", "/m", "--model", "a/b"]
    )
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    settings = Settings.load(flags, environ={})
    assert (settings.port, settings.data_dir, settings.models_dir, settings.model) == (
        8080,
        Path("/tmp/x"),
        Path("/m"),
        "a/b",
    )


def test_tiny_model_command_writes_model_and_loras(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from server.cli import main

    assert main(["tiny-model", "--models-dir", str(tmp_path), "--loras", "3"]) == 0
    assert (tmp_path / "checkpoints" / "tiny-sdxl" / "model_index.json").is_file()
    loras = sorted(p.name for p in (tmp_path / "loras").iterdir())
    assert loras == [f"tiny-lora-{i}.{ext}" for i in range(3) for ext in ("json", "safetensors")]
    assert "wrote" in capsys.readouterr().out
