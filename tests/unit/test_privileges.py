"""The privileges `outbox-relay run` checks before it starts are ones `migrate
--print-grants` grants: a role set up as documented always passes the check."""

from __future__ import annotations

import pytest

from relay.grants import render_grants
from relay.privileges import RUN_PRIVILEGES
from tests.unit.test_security_grants import SCHEMA, granted


@pytest.mark.parametrize("mode", sorted(RUN_PRIVILEGES))
def test_run_checks_only_what_the_printed_grants_give(mode):
    have = granted(render_grants("relay", SCHEMA, mode))
    for table, privileges in RUN_PRIVILEGES[mode].items():
        assert set(privileges) <= have[table], (table, set(privileges) - have[table])
