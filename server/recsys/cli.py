"""The `recsys` command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from recsys import registry, services
from recsys.cli_backup import backup_app
from recsys.cli_common import ConfigOption, settings_or_exit
from recsys.cli_data import data_app
from recsys.cli_db import db_app
from recsys.cli_index import index_app
from recsys.cli_migrate import migrate_embeddings
from recsys.cli_model import model_app
from recsys.cli_precompute import precompute
from recsys.cli_release import release_app
from recsys.cli_train import demo, evaluate, train
from recsys.deploy.supervisor import DEFAULT_BASE_PORT
from recsys.errors import ConfigurationError
from recsys.observability.logging import configure_logging

logger = logging.getLogger("recsys.cli")

app = typer.Typer(
    name="recsys",
    help="recsys: a recommendation serving platform (Retrieve, Rank and Recommend over gRPC).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the effective settings.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(index_app, name="index")
app.add_typer(data_app, name="data")
app.add_typer(model_app, name="model")
app.add_typer(db_app, name="db")
app.add_typer(release_app, name="release")
app.add_typer(backup_app, name="backup")
app.command("train")(train)
app.command("eval")(evaluate)
app.command("demo")(demo)
app.command("precompute")(precompute)
app.command("migrate-embeddings")(migrate_embeddings)


@app.command()
def serve(
    service: Annotated[
        str,
        typer.Argument(
            help=(
                f"What this process hosts: one of {', '.join(services.service_names())}, "
                "or several separated by commas."
            ),
        ),
    ],
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="gRPC listen address (server.host).")] = None,
    port: Annotated[
        int | None, typer.Option(help="gRPC port, 0 for any free port (server.port).")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Prometheus /metrics port, 0 for any (metrics.port).")
    ] = None,
    shard_id: Annotated[
        int | None, typer.Option(help="For `shard`: the shard to host (index.shard_id).")
    ] = None,
    num_shards: Annotated[
        int | None, typer.Option(help="Number of index shards (index.num_shards).")
    ] = None,
) -> None:
    """Start a gRPC server hosting SERVICE until SIGTERM or SIGINT (graceful shutdown)."""
    # Flags override single keys; file and environment still supply the rest of each section.
    overrides: dict[str, Any] = {}
    server_keys = {
        key: value for key, value in (("host", host), ("port", port)) if value is not None
    }
    if server_keys:
        overrides["server"] = server_keys
    if metrics_port is not None:
        overrides["metrics"] = {"port": metrics_port}
    index_keys = {
        key: value
        for key, value in (("shard_id", shard_id), ("num_shards", num_shards))
        if value is not None
    }
    if index_keys:
        overrides["index"] = index_keys
    settings = settings_or_exit(config, overrides)
    configure_logging(settings.logging.level, settings.logging.format)
    names = [name.strip() for name in service.split(",") if name.strip()]
    try:
        services.expand(names)
    except ConfigurationError as error:
        typer.echo(f"recsys: {error.message}", err=True)
        raise typer.Exit(code=2) from error

    from sqlalchemy.exc import SQLAlchemyError

    from recsys.grpc_server.app import run_event_loop
    from recsys.metadata.database import describe_error

    async def run() -> str | None:
        application = await services.build_application(settings, names)
        await application.run_until_signal()
        return application.components.fatal_error if application.components else None

    try:
        fatal_error = run_event_loop(run(), settings.server.event_loop)
    except ConfigurationError as error:
        logger.error("cannot start: %s", error.message)
        raise typer.Exit(code=2) from error
    except SQLAlchemyError as error:
        # The metadata schema check at startup; one line, not the statement.
        logger.error("cannot start: %s", describe_error(error))
        raise typer.Exit(code=1) from error
    if fatal_error is not None:
        # Restart me: what this process exists for stopped (its supervisor restarts it).
        raise typer.Exit(code=1)


@app.command("up")
def up(
    config: ConfigOption = None,
    base_port: Annotated[
        int,
        typer.Option(
            help="Shard s listens on base+s, retrieve on base+100, rank on +101, the local "
            "Kafka broker on +102, consume on +103, metrics on +200 and up."
        ),
    ] = DEFAULT_BASE_PORT,
    log_dir: Annotated[Path, typer.Option(help="One log file per process.")] = Path("var/logs"),
    recommend_replicas: Annotated[
        int,
        typer.Option(
            min=1,
            help="Recommend processes sharing server.port; SIGHUP restarts them one at a time.",
        ),
    ] = 1,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="Mutual TLS on every port, the public one included, with certificates of a "
            "private CA created in --tls-dir on the first start (reused later).",
        ),
    ] = False,
    tls_dir: Annotated[
        Path, typer.Option(help="With --tls: the CA, server and client certificates.")
    ] = Path("var/tls"),
) -> None:
    """Run the distributed layout locally: a process per shard and per service, restarted
    when one dies, until SIGTERM or Ctrl-C. Recommend listens on server.port. With shared
    stores (Redis), the write path too: a Kafka broker (kafka.bootstrap_servers, or a local
    one) and the consumer process."""
    from recsys.deploy.supervisor import BrokerStartError, Supervisor, plan, write_path
    from recsys.events.broker import BrokerNotFound

    settings = settings_or_exit(config, {})
    configure_logging(settings.logging.level, settings.logging.format)
    certificates = None
    if tls:
        from recsys.deploy.certificates import EXTERNAL_CALLER, ensure_layout_certificates

        if settings.server.tls.enabled or settings.outbound.tls.enabled:
            typer.echo(
                "recsys: --tls sets server.tls and outbound.tls from its own certificates; "
                "remove them from the settings or run without --tls",
                err=True,
            )
            raise typer.Exit(code=2)
        certificates = ensure_layout_certificates(tls_dir.absolute())
    try:
        children = plan(
            settings,
            base_port=base_port,
            config_file=config,
            log_dir=log_dir,
            recommend_replicas=recommend_replicas,
            certificates=certificates,
        )
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    except BrokerNotFound as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
    _prepare_sqlite(settings)
    for child in children:
        typer.echo(f"{child.name:<10} {child.address:<22} log {child.log}")
    typer.echo(write_path(settings, base_port).describe())
    if certificates is not None:
        client = certificates.client(EXTERNAL_CALLER)
        typer.echo(
            f"mutual TLS: CA {certificates.ca}, client certificate {client.cert}, key {client.key}"
        )
    try:
        Supervisor(children).run()
    except BrokerStartError as error:
        typer.echo(f"error: the local Kafka broker did not start: {error}", err=True)
        raise typer.Exit(code=1) from None


def _prepare_sqlite(settings: Any) -> None:
    """Embedded SQLite metadata migrated once, before the processes that open it (recommend
    replicas, consume) start together and would each migrate the file at once."""
    from sqlalchemy.exc import SQLAlchemyError

    from recsys.metadata.database import describe_error, is_sqlite
    from recsys.metadata.migrate import prepare_schema

    if not is_sqlite(settings.database.url):
        return  # a server database is upgraded on purpose (`recsys db upgrade`)
    try:
        prepare_schema(settings.database)
    except SQLAlchemyError as error:
        typer.echo(f"recsys: {describe_error(error)}", err=True)
        raise typer.Exit(code=1) from error


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective settings as JSON (defaults, file and environment merged)."""
    settings = settings_or_exit(config, {})
    typer.echo(settings.model_dump_json(indent=2))


@app.command("services")
def list_services() -> None:
    """List the service names `recsys serve` accepts."""
    for name in services.service_names():
        members = services.expand([name])
        suffix = f" ({', '.join(members)})" if name == "embedded" else ""
        typer.echo(f"{name}{suffix}")


@app.command("adapters")
def list_adapters() -> None:
    """List the adapters each port can be configured with."""
    for port in sorted(registry.ADAPTERS):
        typer.echo(f"{port}: {', '.join(registry.adapter_names(port))}")


def main() -> None:
    app(prog_name="recsys")


if __name__ == "__main__":  # pragma: no cover
    main()
