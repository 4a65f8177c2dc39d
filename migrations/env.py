"""Alembic environment for the kit's tables, in schema `dagpg` with their own version table.

In-process (`dagpg db upgrade`) the caller hands over a connection in
`config.attributes["connection"]`. From the alembic command line the connection comes from
DAGSTER_HOME's dagster.yaml. Logging is left alone: fileConfig() would clobber the host's.
"""

from alembic import context
from sqlalchemy import text

SCHEMA = "dagpg"
VERSION_TABLE = "alembic_version"


def run(connection) -> None:
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    context.configure(
        connection=connection,
        version_table=VERSION_TABLE,
        version_table_schema=SCHEMA,
        include_schemas=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    from dagpg import pg
    from dagpg.instance import resolve_instance

    with pg.engine(resolve_instance().target).begin() as conn:
        run(conn)
