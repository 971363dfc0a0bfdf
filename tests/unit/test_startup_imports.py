"""What a polling relay imports at start: the first message waits for every module."""

from __future__ import annotations

import subprocess
import sys


def test_the_relay_service_leaves_the_cdc_source_to_cdc_relays():
    code = "import sys, relay.service; print('relay.cdc.relay' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
