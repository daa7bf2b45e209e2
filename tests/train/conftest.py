"""A tiny dataset (small tokenizer, 64-token sequences) built once per session from the bundled corpus."""

from __future__ import annotations

import pytest

from tests.helpers import build_tiny_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("data"))
