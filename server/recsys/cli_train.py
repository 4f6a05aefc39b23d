"""`recsys train`, `recsys eval` and `recsys demo`: the offline jobs and the sample deployment."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from recsys.cli_common import (
    ConfigOption,
    InteractionsOption,
    ItemsOption,
    MovieLensOption,
    SeedOption,
    UsersOption,
    catalogue_from,
    fail,
    settings_or_exit,
    stage_progress,
)
from recsys.errors import RecsysError
from recsys.settings import RecsysSettings
from recsys_client import RecsysClientError

if TYPE_CHECKING:
    from recsys.data.catalogue import Catalogue


def _say(message: str) -> None:
    typer.echo(f"[{time.strftime('%H:%M:%S')}] {message}", err=True)


def train(
    config: ConfigOption = None,
    movielens: MovieLensOption = None,
    items: ItemsOption = 20_000,
    users: UsersOption = 5_000,
    interactions_per_user: InteractionsOption = 30,
    seed: SeedOption = 0,
    output: Annotated[
        Path, typer.Option(help="Where the embeddings, feature snapshot and report go.")
    ] = Path("var/training"),
    model_repository: Annotated[
        Path | None,
        typer.Option(help="Triton model repository for the new version (rank.model_repository)."),
    ] = None,
    model_version: Annotated[
        str | None, typer.Option(help="Version number (default: one past the newest).")
    ] = None,
    embedding_version: Annotated[
        str | None, typer.Option(help="Embedding version (default: als-<UTC time>).")
    ] = None,
    factors: Annotated[int, typer.Option(min=1, max=4096, help="Embedding dimension.")] = 64,
    regularization: Annotated[float, typer.Option(min=0.0, help="ALS regularisation.")] = 20.0,
    iterations: Annotated[int, typer.Option(min=1, help="ALS iterations.")] = 15,
    tune: Annotated[
        str | None,
        typer.Option(
            help="Choose ALS, EASE^R lambda, candidate mix and ranker settings on a validation "
            "split of the training data: random (each user's pairs 75/25) or last (each "
            "user's latest pair), the protocol the model will be judged by. The chosen values "
            "and validation scores go into train_report.json. The --factors, --regularization "
            "and --iterations options are then the search's starting point.",
        ),
    ] = None,
    load_features: Annotated[
        bool,
        typer.Option(
            "--load-features/--no-load-features",
            help="Also write the feature snapshot into the configured feature store. Off by "
            "default: a live deployment would then ask its index with embeddings of a version "
            "it does not hold yet (popularity answers) until the new index is released.",
        ),
    ] = False,
) -> None:
    """Learn user and item embeddings (implicit ALS) and the ranking model (LightGBM
    lambdarank, exported to ONNX with its feature schema), from MovieLens files or a synthetic
    catalogue, leaving out the users erased in the configured metadata store. Then:
    `recsys index build --embeddings OUTPUT/item_embeddings.npz --no-normalize` and
    `recsys release publish`."""
    from sqlalchemy.exc import SQLAlchemyError

    from recsys.training.dataset import InteractionTable
    from recsys.training.models import EmbeddingSettings
    from recsys.training.pipeline import train_models, write_artifacts

    settings = settings_or_exit(config, {})
    repository = model_repository or settings.rank.model_repository
    _say("reading the catalogue")
    catalogue = catalogue_from(movielens, items, users, interactions_per_user, seed)
    try:
        catalogue = asyncio.run(_without_erased_users(settings, catalogue))
    except (RecsysError, SQLAlchemyError) as error:
        raise fail(error) from error
    table = InteractionTable.from_catalogue(catalogue)
    _say(f"{table.user_count} users, {table.item_count} items, {len(table)} pairs")
    embedding = EmbeddingSettings(
        factors=factors, regularization=regularization, iterations=iterations
    )
    tune_split = None
    if tune is not None:
        from recsys.evaluation.evaluate import Protocol, split

        try:
            tune_protocol = Protocol(tune)
        except ValueError as error:
            raise fail(ValueError(f"--tune: {error}")) from error
        tune_split = functools.partial(split, protocol=tune_protocol, seed=43)
    try:
        models = train_models(
            catalogue,
            table,
            embedding=embedding,
            tune_split=tune_split,
            embedding_version=embedding_version,
            show_progress=sys.stderr.isatty(),
            step=_say,
        )
        artifacts = write_artifacts(
            models,
            output=output,
            model_repository=repository,
            model_name=settings.rank.model_name,
            model_version=model_version,
            small_model_name=settings.rank.small_model_name,
        )
    except (RecsysError, ValueError, FileExistsError) as error:
        raise fail(error) from error
    typer.echo(f"embedding version {artifacts.embedding_version}: {artifacts.embeddings_path}")
    typer.echo(
        f"model {settings.rank.model_name}:{artifacts.model_version}: {artifacts.model_folder}"
    )
    if artifacts.small_model_folder is not None:
        typer.echo(
            f"small model {settings.rank.small_model_name}:{artifacts.model_version}: "
            f"{artifacts.small_model_folder}"
        )
    typer.echo(f"feature snapshot: {artifacts.features_path}; report: {artifacts.report_path}")
    if not load_features:
        typer.echo(
            "next: recsys index build --embeddings "
            f"{artifacts.embeddings_path} --no-normalize; recsys release publish; "
            f"recsys data features {artifacts.features_path}"
        )
    else:
        if settings.features.store == "in_memory":
            typer.echo(
                "the in-memory feature store keeps nothing across processes: serve with "
                f"features.preload_path = {artifacts.features_path}"
            )
        else:
            try:
                load_features_into_store(settings, artifacts.features_path)
            except (RecsysError, SQLAlchemyError) as error:
                raise fail(error) from error


async def _without_erased_users(settings: RecsysSettings, catalogue: Catalogue) -> Catalogue:
    """The catalogue without the users erased in the configured metadata store. An SQLite file
    that does not exist has erased nobody; a server database that cannot be read stops the
    command (training on erased users' data is not a fallback)."""
    from recsys.data.catalogue import erased_users_of, skip_erased
    from recsys.data.erasures import absent_sqlite_file, erasure_records

    async with erasure_records(settings) as metadata:
        if metadata is None:
            typer.echo(
                f"no metadata database at {absent_sqlite_file(settings.database)}: "
                "no erased users to leave out"
            )
            return catalogue
        kept, skipped = skip_erased(catalogue, await erased_users_of(catalogue, metadata))
    typer.echo(f"training data: {skipped.describe()}")
    return kept


def load_features_into_store(settings: RecsysSettings, path: Path) -> None:
    asyncio.run(_load_features(settings, path))


async def _load_features(settings: RecsysSettings, path: Path) -> None:
    from recsys.data.erasures import absent_sqlite_file, erasure_records
    from recsys.data.features_file import load_features, load_into_store
    from recsys.registry import create_adapter

    snapshot = load_features(path)
    async with contextlib.AsyncExitStack() as stack:
        metadata = await stack.enter_async_context(erasure_records(settings))
        if metadata is None:
            typer.echo(
                f"no metadata database at {absent_sqlite_file(settings.database)}: "
                "no erased users to leave out"
            )
        store = create_adapter("feature_store", settings.features.store, settings)
        stack.push_async_callback(store.close)
        totals = {"items": len(snapshot.item_ids), "users": len(snapshot.user_ids)}
        with stage_progress(totals) as progress:
            skipped = await load_into_store(snapshot, store, metadata=metadata, progress=progress)
    typer.echo(
        f"loaded {len(snapshot.user_ids) - skipped} users and {len(snapshot.item_ids)} items "
        f"({snapshot.embedding_version}) into the {settings.features.store} feature store; "
        f"skipped {skipped} erased users"
    )


def evaluate(
    movielens: MovieLensOption = None,
    items: ItemsOption = 20_000,
    users: UsersOption = 5_000,
    interactions_per_user: InteractionsOption = 30,
    seed: SeedOption = 0,
    protocol: Annotated[
        list[str], typer.Option(help="random (per-user 75/25) and/or last (leave-last-out).")
    ] = ["random", "last"],  # noqa: B006 - typer needs a list default
    served: Annotated[
        bool,
        typer.Option(
            "--served/--no-served", help="Also measure a deployment through gRPC and compare."
        ),
    ] = True,
    layout: Annotated[
        str,
        typer.Option(
            help="Where the served path runs: embedded (one process) or distributed "
            "(`recsys up`: a process per shard and service)."
        ),
    ] = "embedded",
    k: Annotated[int, typer.Option(min=1, max=100, help="List length.")] = 10,
    split_seed: Annotated[int, typer.Option(help="Seed of the random split.")] = 42,
    tune: Annotated[
        bool,
        typer.Option(
            "--tune/--no-tune",
            help="Choose the training settings (ALS, EASE^R lambda, candidate mix, ranker) on "
            "a validation split of each protocol's training part, as `recsys train --tune`.",
        ),
    ] = False,
    report: Annotated[Path | None, typer.Option(help="Write the results as JSON here.")] = None,
) -> None:
    """Offline evaluation on a held-out split: popularity, retrieval, item neighbours, EASE^R,
    candidate sources + ranking and the served path (gRPC, diversity off), with P/R/NDCG/MAP@k,
    coverage and diversity."""
    from sqlalchemy.exc import SQLAlchemyError

    from recsys.evaluation.evaluate import Layout, Protocol, evaluate_protocol, markdown_table

    try:
        protocols = [Protocol(name) for name in protocol]
    except ValueError as error:
        raise fail(ValueError(f"--protocol: {error}")) from error
    try:
        chosen_layout = Layout(layout)
    except ValueError as error:
        raise fail(ValueError(f"--layout: {error}")) from error
    catalogue = catalogue_from(movielens, items, users, interactions_per_user, seed)

    async def run() -> list[Any]:
        return [
            await evaluate_protocol(
                catalogue,
                chosen,
                k=k,
                seed=split_seed,
                served=served,
                tune=tune,
                layout=chosen_layout,
                progress=_say,
            )
            for chosen in protocols
        ]

    try:
        results = asyncio.run(run())
    except (
        RecsysError,
        RecsysClientError,
        SQLAlchemyError,
        ValueError,
        RuntimeError,
        OSError,
    ) as error:
        raise fail(error) from error
    typer.echo(markdown_table(results, k=k))
    mismatched = [r for r in results if r.parity is not None and r.parity < 1.0]
    for result in results:
        if result.parity is not None:
            typer.echo(
                f"{result.protocol.value}: served lists equal the offline ranked lists for "
                f"{result.parity:.2%} of users ({result.degraded} degraded answers)"
            )
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(
            json.dumps(
                [
                    {
                        "protocol": result.protocol.value,
                        "k": k,
                        "train_pairs": result.train_pairs,
                        "test_pairs": result.test_pairs,
                        "parity": result.parity,
                        "degraded_answers": result.degraded,
                        "seconds": result.seconds,
                        "rows": {name: row.as_dict() for name, row in result.rows.items()},
                        "training": result.training,
                    }
                    for result in results
                ],
                indent=2,
            )
            + "\n"
        )
    if mismatched:
        raise typer.Exit(code=1)


def demo(
    movielens: MovieLensOption = None,
    items: ItemsOption = 20_000,
    users: UsersOption = 5_000,
    interactions_per_user: InteractionsOption = 30,
    seed: SeedOption = 0,
    folder: Annotated[Path, typer.Option(help="Where the sample deployment lives.")] = Path(
        "var/sample"
    ),
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="gRPC port (0: any free port).")] = 50051,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Prepare again even when FOLDER holds this source.")
    ] = False,
    exit_after_samples: Annotated[
        bool, typer.Option("--exit-after-samples", help="Stop after printing the samples.")
    ] = False,
) -> None:
    """The sample deployment: prepare (catalogue, train, 10 shard snapshots, SQLite, feature
    snapshot) unless FOLDER already holds it, serve the embedded mode, print recommendations
    for a few users through the client library, and serve until Ctrl-C."""
    from sqlalchemy.exc import SQLAlchemyError

    from recsys import services
    from recsys.deploy.sample import SETTINGS_FILE
    from recsys.observability.logging import configure_logging
    from recsys.settings import load_settings

    started = time.perf_counter()
    source = {
        "movielens": str(movielens.resolve()) if movielens else None,
        "items": items,
        "users": users,
        "interactions_per_user": interactions_per_user,
        "seed": seed,
    }
    source_file = folder / "source.json"
    reuse = (
        not rebuild
        and source_file.is_file()
        and json.loads(source_file.read_text()) == source
        and (folder / SETTINGS_FILE).is_file()
    )
    catalogue = catalogue_from(movielens, items, users, interactions_per_user, seed)
    if reuse:
        _say(f"using the sample deployment in {folder} (--rebuild prepares it again)")
    else:
        try:
            _prepare_sample(catalogue, folder)
        except (RecsysError, SQLAlchemyError, ValueError, OSError) as error:
            raise fail(error) from error
        source_file.write_text(json.dumps(source) + "\n")
        _say(f"sample deployment ready in {time.perf_counter() - started:.0f} s")
    settings = load_settings(
        folder / SETTINGS_FILE,
        server={"host": host, "port": port},
        logging={"access_log": False, "level": "WARNING"},
    )
    configure_logging(settings.logging.level, settings.logging.format)
    sample_users = [user.user_id for user in catalogue.users[:3]] + ["someone-new"]
    titles = catalogue.titles

    async def show_samples(bound_port: int) -> bool:
        try:
            await _print_samples(f"{host}:{bound_port}", sample_users, titles)
        except RecsysClientError as error:
            # Serving goes on: the samples are a courtesy, the platform is the point.
            typer.echo(f"recsys: the sample calls failed: {error}", err=True)
        return not exit_after_samples

    async def run() -> None:
        application = await services.build_application(settings, ["embedded"])
        await application.run_until_signal(on_started=show_samples)

    try:
        asyncio.run(run())
    except (RecsysError, SQLAlchemyError) as error:
        raise fail(error) from error


def _prepare_sample(catalogue: Any, folder: Path) -> None:
    from recsys.deploy.sample import prepare_deployment
    from recsys.training.dataset import InteractionTable
    from recsys.training.pipeline import train_models

    table = InteractionTable.from_catalogue(catalogue)
    _say(
        f"catalogue: {table.item_count} items, {table.user_count} users, {len(table)} pairs; "
        "training"
    )
    models = train_models(catalogue, table, show_progress=sys.stderr.isatty(), step=_say)
    asyncio.run(prepare_deployment(catalogue, models, folder, progress=_say))


async def _print_samples(target: str, user_ids: list[str], titles: dict[int, str]) -> None:
    from recsys_client import AsyncRecsysClient, ClientOptions

    async with AsyncRecsysClient(ClientOptions(target=target, timeout_seconds=5.0)) as client:
        for user_id in user_ids:
            response = await client.recommend(user_id, limit=5)
            cold = ", cold start" if response.cold_start else ""
            typer.echo(
                f"\nuser {user_id}: {response.explanation} (model {response.model_version or '-'}"
                f", index {response.index_version or '-'}{cold})"
            )
            for rank, item in enumerate(response.items, start=1):
                title = titles.get(item.item_id, f"item {item.item_id}")
                typer.echo(
                    f"  {rank}. {title} [{item.category}] score {item.score:.3f}"
                    f" - {item.reason_text}"
                )
    typer.echo(
        f"""
recsys is serving on {target} (embedded mode: Recommend, Retrieve, Rank, Ingest). Call it:

  Python:  from recsys_client import RecsysClient, ClientOptions
           with RecsysClient(ClientOptions(target="{target}")) as client:
               print(client.recommend("{user_ids[0]}", limit=10))
  grpcurl: grpcurl -plaintext \\
             -d '{{"user_id": "{user_ids[0]}", "surface": "homepage", "limit": 10}}' \\
             {target} recsys.v1.RecommendService/Recommend
  health:  grpcurl -plaintext -d '{{"service": "readiness"}}' {target} grpc.health.v1.Health/Check

Ctrl-C stops it."""
    )
