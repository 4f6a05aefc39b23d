"""MovieLens files from a path: the 100K layout (`u.data`, `u.item`, `u.user`) and the
`ratings.csv` / `movies.csv` layout of the later releases.

Genres become categories: an item has all its genres, and its primary category is the most
specific of them (`primary_categories`: the genre with the fewest items). User ages come from
`u.user`; a country is derived from the zip code (five digits: US; a Canadian postal code: CA;
else unknown). Every rating becomes a RATE interaction with the rating as its value.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
import re
import urllib.request
import zipfile
from pathlib import Path

from recsys.data.catalogue import (
    Catalogue,
    categories_from,
    freshness_from,
    popularity_from,
    primary_categories,
)
from recsys.domain.interactions import Interaction, InteractionKind
from recsys.errors import ConfigurationError
from recsys.ports.metadata import ItemMetadata, UserProfile

logger = logging.getLogger(__name__)

DOWNLOAD_URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
CANADIAN_POSTAL_CODE = re.compile(r"^[A-Z]\d[A-Z]\d?[A-Z]?\d?$")


def country_from_zip(zip_code: str) -> str | None:
    code = zip_code.strip().upper()
    if re.fullmatch(r"\d{5}", code):
        return "US"
    if CANADIAN_POSTAL_CODE.match(code):
        return "CA"
    return None


def _timestamp(seconds: str) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(seconds), tz=dt.UTC)


def load_movielens(path: Path) -> Catalogue:
    """Reads a MovieLens folder (either layout)."""
    path = Path(path)
    if (path / "u.data").is_file():
        return _load_100k(path)
    if (path / "ratings.csv").is_file():
        return _load_csv(path)
    raise ConfigurationError(f"{path} holds neither u.data nor ratings.csv (MovieLens layouts)")


def _load_100k(path: Path) -> Catalogue:
    released: dict[int, dt.datetime | None] = {}
    categories: dict[int, tuple[str, ...]] = {}
    titles: dict[int, str] = {}
    with open(path / "u.item", encoding="latin-1") as handle:
        for row in csv.reader(handle, delimiter="|"):
            item = int(row[0])
            titles[item] = row[1]
            try:
                released[item] = dt.datetime.strptime(row[2], "%d-%b-%Y").replace(tzinfo=dt.UTC)
            except ValueError:
                released[item] = None
            flags = row[5:24]
            categories[item] = categories_from(
                GENRES_100K[i] for i, flag in enumerate(flags) if flag == "1"
            )
    users = []
    with open(path / "u.user", encoding="latin-1") as handle:
        for row in csv.reader(handle, delimiter="|"):
            users.append(UserProfile(row[0], age=int(row[1]), country=country_from_zip(row[4])))
    interactions = []
    with open(path / "u.data", encoding="latin-1") as handle:
        for line in handle:
            user, item_text, rating, seconds = line.split("\t")
            interactions.append(
                Interaction(
                    f"ml-{user}-{item_text}",
                    user,
                    int(item_text),
                    InteractionKind.RATE,
                    float(rating),
                    _timestamp(seconds),
                )
            )
    return _catalogue(categories, released, titles, users, interactions)


def _load_csv(path: Path) -> Catalogue:
    categories: dict[int, tuple[str, ...]] = {}
    titles: dict[int, str] = {}
    released: dict[int, dt.datetime | None] = {}
    with open(path / "movies.csv", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            item = int(row["movieId"])
            titles[item] = row["title"]
            categories[item] = categories_from(
                genre for genre in row["genres"].split("|") if genre != "(no genres listed)"
            )
            year = re.search(r"\((\d{4})\)\s*$", row["title"])
            released[item] = dt.datetime(int(year.group(1)), 1, 1, tzinfo=dt.UTC) if year else None
    interactions = []
    user_ids: set[str] = set()
    with open(path / "ratings.csv", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            user_ids.add(row["userId"])
            interactions.append(
                Interaction(
                    f"ml-{row['userId']}-{row['movieId']}",
                    row["userId"],
                    int(row["movieId"]),
                    InteractionKind.RATE,
                    float(row["rating"]),
                    _timestamp(row["timestamp"]),
                )
            )
    users = [UserProfile(user) for user in sorted(user_ids, key=int)]
    return _catalogue(categories, released, titles, users, interactions)


def _catalogue(
    categories: dict[int, tuple[str, ...]],
    released: dict[int, dt.datetime | None],
    titles: dict[int, str],
    users: list[UserProfile],
    interactions: list[Interaction],
) -> Catalogue:
    item_ids = sorted(categories)
    popularity = popularity_from(interactions, item_ids)
    primary = primary_categories(categories)
    items = [
        ItemMetadata(
            item,
            primary[item],
            popularity=popularity[item],
            created_at=released[item],
            categories=categories[item],
        )
        for item in item_ids
    ]
    return Catalogue(items, users, interactions, titles, freshness_from(released))


def download_movielens(name: str, target: Path) -> Path:
    """Downloads and unpacks a MovieLens release (e.g. "ml-100k", "ml-latest-small") into
    `target`; returns the folder holding its files."""
    if not re.fullmatch(r"ml-[a-z0-9-]+", name):
        raise ConfigurationError(f"unknown MovieLens release name {name!r}")
    url = DOWNLOAD_URL.format(name=name)
    logger.info("downloading MovieLens", extra={"url": url})
    with urllib.request.urlopen(url, timeout=120) as response:
        archive = response.read()
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(archive)) as unpacked:
        unpacked.extractall(target)
    return target / name
