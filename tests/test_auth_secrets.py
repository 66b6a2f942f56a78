"""Identifiers and secrets the authorization server makes."""

from __future__ import annotations

import re

from fhir_server.auth.secrets import new_client_id


def test_client_ids_are_safe_to_pass_on_a_command_line():
    ids = [new_client_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", client_id) for client_id in ids)  # never a leading '-'

