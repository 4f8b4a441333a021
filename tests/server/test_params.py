"""Which drafters a request may choose follows the backend the server runs."""

from __future__ import annotations

import pytest

from localspec.errors import InvalidSettingsError
from localspec.server.config import ServerConfig
from localspec.server.errors import APIError
from localspec.server.params import generation_settings
from localspec.server.schemas import ChatCompletionRequest

TORCH = ServerConfig(model_id="m", drafters=("none", "auto", "layerskip", "polybasic"))


def request(drafter: str) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}],
                                 speculation={"drafter": drafter})


def test_torch_drafters_only_where_the_backend_offers_them():
    assert generation_settings(request("layerskip"), TORCH, 8, 16).drafter == "layerskip"
    with pytest.raises(APIError, match="unknown drafter 'layerskip'"):
        generation_settings(request("layerskip"), ServerConfig(model_id="m"), 8, 16)


def test_default_drafter_must_be_one_the_server_offers():
    with pytest.raises(InvalidSettingsError):
        ServerConfig(model_id="m", drafter="layerskip")
