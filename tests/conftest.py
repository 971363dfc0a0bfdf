"""Shared pytest set-up. The service fixtures (pg_dsn, db_dsn, postgres, kafka_bootstrap,
tansu, private_tansu, amqp_url, private_rabbitmq, unique_name) live in tests/support and
start nothing until a test asks for them."""

pytest_plugins = ["tests.support.fixtures_services"]
