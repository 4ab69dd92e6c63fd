"""Shared fixtures: tiny models built from configs (offline), fixed seeds."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

import tiny_models


@pytest.fixture(scope="session")
def gpt2():
    return tiny_models.gpt2()


@pytest.fixture(scope="session")
def gpt2_lm():
    return tiny_models.gpt2(lm=True)


@pytest.fixture(scope="session")
def llama():
    return tiny_models.llama()


@pytest.fixture(scope="session")
def gpt_neo():
    return tiny_models.gpt_neo()


@pytest.fixture(scope="session")
def gpt_neox():
    return tiny_models.gpt_neox()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
