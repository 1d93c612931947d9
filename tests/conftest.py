import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
warnings.filterwarnings("ignore", message=".*torchvision.*")

import pytest
import torch

from indomain.testing import tiny_sd_components


@pytest.fixture
def components(tmp_path):
    """Fresh tiny SD-1.x components (random weights, seed 0), tokenizer written into tmp_path."""
    return tiny_sd_components(tmp_path / "tokenizer")


@pytest.fixture
def null_embedding(components):
    tok, te = components["tokenizer"], components["text_encoder"]
    ids = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return te(ids)[0]
