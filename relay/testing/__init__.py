"""What connector authors use in their tests: ``relay.testing.conformance``."""

import sys

# pytest explains a failed assert only in modules it rewrote on import, which it does for
# test modules and for those registered before they are imported. Registering here, while
# the package is imported on the way to the suite, shows a connector author which outcome
# differed. Only when pytest already runs: the relay itself never imports it.
if (pytest := sys.modules.get("pytest")) is not None:
    pytest.register_assert_rewrite("relay.testing.conformance")
