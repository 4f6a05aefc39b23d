"""FeatureStore: per-user features read on the serving path (embeddings today; preferences,
recent interactions and item features join with the Recommend service)."""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class UserEmbedding:
    """A user's embedding and the version of the model that produced it (seed Simulation 6)."""

    vector: npt.NDArray[np.float32]
    embedding_version: str
    generated_at: dt.datetime


class FeatureStore(abc.ABC):
    """Reads raise RecsysError (Unavailable, DeadlineExceeded) when the store cannot answer;
    callers on the serving path degrade to default features."""

    @abc.abstractmethod
    async def get_user_embedding(self, user_id: str) -> UserEmbedding | None:
        """The user's embedding, or None when the user has none."""

    @abc.abstractmethod
    async def put_user_embedding(self, user_id: str, embedding: UserEmbedding) -> None: ...

    @abc.abstractmethod
    async def delete_user(self, user_id: str) -> int:
        """Removes everything stored for the user; returns how many records went."""

    async def close(self) -> None:
        return None
