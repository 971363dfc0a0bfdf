"""Shared pytest set-up. The service fixtures (pg_dsn, db_dsn, postgres, kafka_bootstrap,
tansu, private_tansu, amqp_url, private_rabbitmq, unique_name) live in tests/support and
start nothing until a test asks for them.

The in-memory connector is registered as ``memory`` for this test run only: the
directory holding its entry point goes on ``sys.path`` here (and on ``PYTHONPATH`` of the
``outbox-relay`` commands the tests start). An installed relay knows no such connector.
"""

import sys

from tests.support.cli import TEST_DOUBLES

if str(TEST_DOUBLES) not in sys.path:
    sys.path.append(str(TEST_DOUBLES))

pytest_plugins = ["tests.support.fixtures_services"]
