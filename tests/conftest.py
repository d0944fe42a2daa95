"""Shared test fixtures: the real data in ../shared/data, skipped clearly when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TIKTOKEN_CACHE = SHARED / "gpt2" / "tiktoken-cache"

# GPT-2's BPE offline: point tiktoken at the shared cache before anything imports it.
if TIKTOKEN_CACHE.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_CACHE))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared test data not found at {SHARED}")
    return SHARED


@pytest.fixture
def gpt2_available(shared_data) -> None:
    if not TIKTOKEN_CACHE.is_dir():
        pytest.skip(f"GPT-2 tiktoken cache not found at {TIKTOKEN_CACHE}")
