"""`recsys index ...`: build, inspect, verify, canary-check and roll back shard snapshots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from recsys.cli_common import fail
from recsys.errors import RecsysError
from recsys.index.builder import build_shard_snapshots, default_index_version
from recsys.index.canary import check_canary, last_good_before, load_golden
from recsys.index.embeddings_file import load_embeddings
from recsys.index.snapshots import Expectations, SnapshotInvalid, SnapshotManager
from recsys.index.spec import IndexSpec, IndexType, Metric

index_app = typer.Typer(
    help="Build, inspect, verify and roll back index snapshots.", no_args_is_help=True
)

SnapshotsOption = Annotated[
    Path, typer.Option("--snapshots", "-s", help="Snapshot folder (index.snapshot_dir).")
]
ShardOption = Annotated[
    int | None, typer.Option("--shard", help="Only this shard (default: every shard).")
]


def _manager(snapshots: Path, keep: int = 3) -> SnapshotManager:
    from recsys.adapters.snapshots.local import LocalSnapshotStore

    return SnapshotManager(LocalSnapshotStore(snapshots), keep_versions=keep)


@index_app.command("build")
def build(
    embeddings: Annotated[
        Path, typer.Option(help="Item embeddings: .npz, .npy or .parquet.", exists=True)
    ],
    snapshots: SnapshotsOption = Path("var/snapshots"),
    num_shards: Annotated[int, typer.Option(min=1, help="Shards (item_id % N).")] = 10,
    index_type: Annotated[IndexType, typer.Option(help="FAISS index type.")] = IndexType.IVF_FLAT,
    metric: Annotated[Metric, typer.Option(help="Similarity metric.")] = Metric.INNER_PRODUCT,
    normalize: Annotated[
        bool | None,
        typer.Option(
            "--normalize/--no-normalize",
            help="Inner product on unit vectors (cosine); --no-normalize keeps raw inner products "
            "(what `recsys train`'s ALS embeddings are scored by). Default: on for inner_product.",
        ),
    ] = None,
    nlist: Annotated[int, typer.Option(min=0, help="IVF lists per shard; 0 = about sqrt(n).")] = 0,
    nprobe: Annotated[int, typer.Option(min=1, help="Default IVF lists probed.")] = 16,
    pq_m: Annotated[int, typer.Option(min=1, help="IVF-PQ sub-quantizers.")] = 8,
    hnsw_m: Annotated[int, typer.Option(min=4, help="HNSW graph degree.")] = 32,
    ef_search: Annotated[int, typer.Option(min=1, help="Default HNSW efSearch.")] = 128,
    item_ids: Annotated[
        Path | None, typer.Option(help="Item ids (.npy) for a .npy embeddings file.")
    ] = None,
    embedding_version: Annotated[
        str | None, typer.Option(help="Embedding version (overrides the file's).")
    ] = None,
    index_version: Annotated[
        str | None, typer.Option(help="Version of the new snapshots (default idx-<UTC time>).")
    ] = None,
    keep: Annotated[int, typer.Option(min=1, help="Versions kept per shard.")] = 3,
    no_activate: Annotated[
        bool, typer.Option("--no-activate", help="Write the snapshots but leave CURRENT.")
    ] = False,
) -> None:
    """Build one verified snapshot per shard from an embeddings file and make it CURRENT."""
    try:
        data = load_embeddings(
            embeddings, item_ids_path=item_ids, embedding_version=embedding_version
        )
        spec = IndexSpec(
            dimension=data.dimension,
            index_type=index_type,
            metric=metric,
            normalize=(metric is Metric.INNER_PRODUCT) if normalize is None else normalize,
            nlist=nlist,
            nprobe=nprobe,
            pq_m=pq_m,
            hnsw_m=hnsw_m,
            ef_search=ef_search,
        )
    except (RecsysError, ValueError) as error:
        raise fail(error) from error
    version = index_version or default_index_version()
    manager = _manager(snapshots, keep)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(f"building {version}", total=num_shards)
        try:
            manifests = build_shard_snapshots(
                data,
                spec,
                num_shards=num_shards,
                index_version=version,
                snapshots=manager,
                make_current=not no_activate,
                on_shard_done=lambda shard_id, manifest: progress.advance(task),
            )
        except (RecsysError, ValueError, FileExistsError) as error:
            raise fail(error) from error
    items = sum(manifest.item_count for manifest in manifests)
    typer.echo(
        f"built {version}: {items} items of dimension {spec.dimension} in {num_shards} shards "
        f"({index_type.value}, {metric.value}, embedding version {data.embedding_version})"
        + ("" if no_activate else "; CURRENT now points at it")
    )


@index_app.command("info")
def info(snapshots: SnapshotsOption = Path("var/snapshots"), shard: ShardOption = None) -> None:
    """Print each shard's CURRENT version and the versions kept, as JSON."""
    manager = _manager(snapshots)
    shard_ids = [shard] if shard is not None else manager.store.shard_ids()
    report = []
    for shard_id in shard_ids:
        versions: list[dict[str, object]] = []
        for version in manager.versions_newest_first(shard_id):
            try:
                manifest = manager.manifest(shard_id, version)
            except SnapshotInvalid as error:
                versions.append({"index_version": version, "error": error.message})
                continue
            versions.append(
                {
                    "index_version": version,
                    "item_count": manifest.item_count,
                    "embedding_version": manifest.embedding_version,
                    "dimension": manifest.spec.dimension,
                    "index_type": manifest.spec.index_type.value,
                    "metric": manifest.spec.metric.value,
                    "num_shards": manifest.num_shards,
                    # Shards of one build share it; a mix searches with mismatched lists.
                    "quantizer_id": manifest.quantizer_id,
                    "built_at": manifest.built_at.isoformat(),
                }
            )
        report.append(
            {"shard_id": shard_id, "current": manager.store.current(shard_id), "versions": versions}
        )
    typer.echo(json.dumps(report, indent=2))


@index_app.command("verify")
def verify(
    snapshots: SnapshotsOption = Path("var/snapshots"),
    shard: ShardOption = None,
    version: Annotated[
        str | None, typer.Option(help="Version to verify (default: CURRENT).")
    ] = None,
    quarantine: Annotated[
        bool, typer.Option(help="Move versions that fail into quarantine.")
    ] = False,
) -> None:
    """Verify checksums, manifest, routing and a canary search; exit 1 if any shard fails."""
    manager = _manager(snapshots)
    shard_ids = [shard] if shard is not None else manager.store.shard_ids()
    failures = 0
    for shard_id in shard_ids:
        target = version or manager.store.current(shard_id)
        if target is None:
            typer.echo(f"shard {shard_id}: no CURRENT snapshot")
            failures += 1
            continue
        try:
            manifest = manager.manifest(shard_id, target)
            expected = Expectations(shard_id=shard_id, num_shards=manifest.num_shards)
            manager.verify(target, expected)
        except SnapshotInvalid as error:
            failures += 1
            typer.echo(f"shard {shard_id}: {target} FAILED: {error.message}")
            if quarantine:
                manager.store.quarantine(shard_id, target, error.message)
            continue
        typer.echo(f"shard {shard_id}: {target} ok ({manifest.item_count} items)")
    if failures:
        raise typer.Exit(code=1)


@index_app.command("rollback")
def rollback(snapshots: SnapshotsOption = Path("var/snapshots"), shard: ShardOption = None) -> None:
    """Point CURRENT back at the previous version; shards swap on their next poll."""
    manager = _manager(snapshots)
    shard_ids = [shard] if shard is not None else manager.store.shard_ids()
    for shard_id in shard_ids:
        try:
            previous = manager.rollback(shard_id)
        except RecsysError as error:
            raise fail(error) from error
        typer.echo(f"shard {shard_id}: CURRENT -> {previous}")


@index_app.command("canary")
def canary(
    snapshots: SnapshotsOption = Path("var/snapshots"),
    shard: ShardOption = None,
    rollback: Annotated[
        bool,
        typer.Option(
            "--rollback/--no-rollback",
            help="Point CURRENT of a failing shard at the newest older version that passes.",
        ),
    ] = True,
) -> None:
    """Search each shard's golden queries against its CURRENT version and compare with the
    results recorded at build time; exit 1 if any shard fails (and roll it back)."""
    manager = _manager(snapshots)
    shard_ids = [shard] if shard is not None else manager.store.shard_ids()
    failures = 0
    for shard_id in shard_ids:
        target = manager.store.current(shard_id)
        if target is None:
            typer.echo(f"shard {shard_id}: no CURRENT snapshot")
            failures += 1
            continue
        expected: Expectations | None = None
        try:
            manifest = manager.manifest(shard_id, target)
            expected = Expectations(shard_id=shard_id, num_shards=manifest.num_shards)
            _, loaded = manager.verify(target, expected)
            golden = load_golden(manager, shard_id, target)
        except SnapshotInvalid as error:
            problem = f"verification: {error.message}"
        else:
            if golden is None:
                typer.echo(f"shard {shard_id}: {target} has no golden queries (not checked)")
                continue
            result = check_canary(loaded, golden)
            if result.passed:
                typer.echo(f"shard {shard_id}: {target} ok ({result.describe()})")
                continue
            problem = result.describe()
        failures += 1
        typer.echo(f"shard {shard_id}: {target} FAILED: {problem}")
        if not rollback:
            continue
        if expected is None:
            typer.echo(f"shard {shard_id}: its manifest is unreadable; see `recsys index rollback`")
            continue
        good = last_good_before(manager, expected, target)
        if good is None:
            typer.echo(f"shard {shard_id}: no older version passes; CURRENT stays {target}")
            continue
        manager.store.set_current(shard_id, good.index_version)
        typer.echo(
            f"shard {shard_id}: CURRENT -> {good.index_version} ({good.result.describe()}); "
            "shards swap on their next poll"
        )
    if failures:
        raise typer.Exit(code=1)
