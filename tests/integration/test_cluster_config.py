"""``chainmail check-config`` reaches the shared services a cluster's nodes depend on: the
PostgreSQL database (and compares its schema with this chainmail's migrations) and the
RabbitMQ broker; one that cannot be reached is an error naming the file, line and key."""

from __future__ import annotations

from chainmail.store.backends import open_backend
from tests.integration.test_amqp_spool import broker  # noqa: F401  (fixture)
from tests.integration.test_check_config import check, conf_dir
from tests.integration.test_postgres_stores import postgres, properties  # noqa: F401


def test_postgres_reached_and_its_schema_compared(tmp_path, postgres):  # noqa: F811
    dbname = postgres.new_database()
    conf = conf_dir(tmp_path, extra={"postgres.properties": properties(postgres, dbname)})
    result = check(tmp_path, conf)
    assert result.returncode == 0, result.stderr
    assert "database: reachable; migration(s) 0001" in result.stdout
    assert "will be applied at the next start" in result.stdout
    backend = open_backend(conf, tmp_path / "var")
    backend.domains().close()   # the migrations applied, as a start does
    result = check(tmp_path, conf)
    assert "database: reachable, schema up to date" in result.stdout, result.stdout
    postgres.admin("INSERT INTO schema_migrations (version, name) VALUES (9999, 'future')",
                   dbname)
    result = check(tmp_path, conf)
    assert result.returncode == 1
    assert "schema has migration 9999" in result.stderr and "upgrade chainmail" in result.stderr


def test_unreachable_postgres_is_an_error_naming_the_line(tmp_path):
    conf = conf_dir(tmp_path, extra={"postgres.properties":
                                     "database.username=james\ndatabase.host=127.0.0.1\n"
                                     "database.port=1\n"})
    result = check(tmp_path, conf)
    assert result.returncode == 1
    assert "postgres.properties:2: database.host: cannot reach PostgreSQL" in result.stderr


def test_rabbitmq_reached_or_an_error_naming_the_line(tmp_path, broker):  # noqa: F811
    (tmp_path / "up").mkdir()
    conf = conf_dir(tmp_path / "up", extra={"rabbitmq.properties": f"uri={broker.uri}\n"})
    result = check(tmp_path / "up", conf)
    assert result.returncode == 0, result.stderr
    assert f"queues: RabbitMQ amqp://guest@127.0.0.1:{broker.port}/ (quorum queues)" \
        in result.stdout
    assert "broker: reachable" in result.stdout
    (tmp_path / "down").mkdir()
    conf = conf_dir(tmp_path / "down", extra={"rabbitmq.properties":
                                              "# the broker\nuri=amqp://u:p@127.0.0.1:1/\n"})
    result = check(tmp_path / "down", conf)
    assert result.returncode == 1
    assert "rabbitmq.properties:2: uri: cannot reach RabbitMQ" in result.stderr
    assert "u:p@" not in result.stderr + result.stdout   # never the password
