"""Settings read from the environment: the edge cases an operator's shell produces."""

from pathlib import Path

import platformdirs
import pytest

from backend.settings import Settings


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_data_dir_variable_means_the_default_data_dir_not_the_current_directory(monkeypatch, value):
    monkeypatch.setenv("HYPERSERVICE_DATA_DIR", value)
    settings = Settings()
    assert settings.data_dir == Path(platformdirs.user_data_dir("hyperservice"))
    assert settings.state_file.parent != Path("")


def test_a_data_dir_variable_is_used_as_given(monkeypatch, tmp_path):
    monkeypatch.setenv("HYPERSERVICE_DATA_DIR", str(tmp_path / "state"))
    assert Settings().data_dir == tmp_path / "state"
