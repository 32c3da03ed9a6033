"""The config table in README.md is generated from `Config`; keep them in step."""

from __future__ import annotations

import re
from pathlib import Path

from multiplex.config import Config, fields, markdown_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_config_table_matches_config() -> None:
    text = README.read_text()
    pattern = r"<!-- config-table:start[^>]*-->\n(.*?)\n<!-- config-table:end -->"
    match = re.search(pattern, text, re.S)
    assert match, "README.md lost its config-table markers"
    assert match.group(1) == markdown_table(), (
        "README.md's config table is stale: regenerate it with `python -m multiplex.config`"
    )


def test_every_setting_has_help_and_a_default() -> None:
    config = Config()
    for field in fields():
        assert field.metadata.get("help"), f"{field.name} has no help text"
        assert hasattr(config, field.name)


def test_default_bind() -> None:
    assert Config().bind == ["127.0.0.1:8000"]
