"""Decoding request bodies (relay/sources/payloads.py)."""

from __future__ import annotations

import pytest

from relay.errors import BadRequest
from relay.sources.payloads import json_object


def test_escaped_surrogate_pair_decodes_to_its_character() -> None:
    assert json_object(b'{"text": "ship it \\ud83d\\ude80"}') == {"text": "ship it \U0001F680"}


@pytest.mark.parametrize("escaped", ["\\ud800", "\\uDFFF", "x\\udc00y", "\\ude80\\ud83d"])
def test_unpaired_surrogate_escape_is_a_bad_request(escaped: str) -> None:
    with pytest.raises(BadRequest, match="surrogate"):
        json_object(('{"a": {"b": ["' + escaped + '"]}}').encode())


def test_unpaired_surrogate_in_a_key_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="surrogate"):
        json_object(b'{"\\ud800": 1}', strict=True)
