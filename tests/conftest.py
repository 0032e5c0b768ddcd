"""Shared pytest configuration."""

from __future__ import annotations


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "realdata: needs fetched or installed datasets; skipped when they are absent")
