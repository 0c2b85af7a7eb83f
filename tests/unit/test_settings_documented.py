"""Every setting is in the README's configuration table (option,
environment variable and TOML key), so an operator finds each one."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatd.config import SETTINGS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
ROWS = [line for line in README.splitlines() if line.startswith("| `--")]


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.name for s in SETTINGS])
def test_the_readme_table_has_a_row_for_the_setting(setting) -> None:
    row = next((r for r in ROWS if r.startswith(f"| `--{setting.option}` |")), None)
    assert row is not None, f"README.md has no row for --{setting.option}"
    assert f"`{setting.env}`" in row and f"`{setting.name}`" in row, row
