"""The candidate sources of the Recommend pipeline, composed from the process's components and
settings (composition sits above the layers it wires): retrieval, with the neighbours of the
user's history and popularity merged into it when configured (`candidates.*`); trending as the
fallback; the cold-start sources."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from recsys.adapters.candidates.neighbours import NeighbourCandidates
from recsys.adapters.candidates.popularity import (
    PopularInCategoryCandidates,
    RisingCandidates,
    TrendingCandidates,
)
from recsys.adapters.candidates.retrieval import RetrievalCandidates
from recsys.adapters.candidates.similar import SimilarToLikedCandidates
from recsys.domain.recommend.pipeline import CandidateSources
from recsys.domain.recommend.values import RecommendConfig
from recsys.errors import ConfigurationError
from recsys.ports.candidates import VectorSearch
from recsys.similarity.neighbours import ItemNeighbours, load_neighbours

if TYPE_CHECKING:
    from recsys.composition import Components

logger = logging.getLogger(__name__)


def read_neighbour_store(path: Path) -> ItemNeighbours:
    """The store at `path` (blocking: run it in a thread); ConfigurationError naming the path
    when it is missing or not a neighbour store this code reads."""
    try:
        store = load_neighbours(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ConfigurationError(
            f"candidates.neighbours_path {path}: cannot read the neighbour store ({error})"
        ) from error
    logger.info(
        "neighbour store loaded",
        extra={
            "path": str(path),
            "items": store.item_count,
            "method": store.method,
            "bytes": store.nbytes,
        },
    )
    return store


def _check_mix(store: ItemNeighbours, retrieval: int, neighbours: int, popularity: int) -> None:
    """Warns when the served mix is not the one the ranking model was trained on (recorded in
    the store by `recsys train`): its source placements then mean something else."""
    trained = store.parameters.get("candidate_mix")
    served = {"retrieval": retrieval, "neighbours": neighbours, "popularity": popularity}
    if isinstance(trained, dict) and trained != served:
        logger.warning(
            "the candidate mix differs from the one the ranking model was trained on: set "
            "recommend.candidates, candidates.neighbours and candidates.popularity from "
            "train_report.json's candidate_mix",
            extra={"trained_mix": trained, "served_mix": served},
        )


async def candidate_sources(
    components: Components, search: VectorSearch, config: RecommendConfig
) -> CandidateSources:
    """The sources Recommend finds candidates with; `search`: the index, in process or remote."""
    settings = components.settings.candidates
    metadata = components.metadata
    per_source = config.cold_start_candidates_per_source
    store = await components.item_neighbours()
    neighbours = None
    if store is not None and settings.neighbours > 0:
        neighbours = NeighbourCandidates(
            store, count=settings.neighbours, history_limit=settings.history_limit
        )
    popularity = None
    if settings.popularity > 0:
        # The catalogue-wide list whatever the request's category, as the ranker was trained
        # on (selection keeps the category's items afterwards).
        popularity = TrendingCandidates(metadata, count=settings.popularity, by_category=False)
    if store is not None:
        _check_mix(store, config.candidates, settings.neighbours, settings.popularity)
    return CandidateSources(
        personalized=RetrievalCandidates(search, count=config.candidates),
        fallback=TrendingCandidates(metadata, count=config.candidates),
        # Reasons go to the first source that found an item: the user's own choices first.
        cold_start=(
            PopularInCategoryCandidates(metadata, count=per_source),
            RisingCandidates(
                components.item_counters,
                TrendingCandidates(metadata, count=per_source),
                count=per_source,
            ),
            SimilarToLikedCandidates(
                components.feature_store, search, per_item=config.cold_start_similar_per_liked_item
            ),
        ),
        neighbours=neighbours,
        neighbours_timeout_seconds=settings.neighbours_timeout_ms / 1000,
        popularity=popularity,
    )
