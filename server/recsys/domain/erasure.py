"""Right to erasure (seed "Privacy Controls"): every store forgets the user, downstream
consumers hear of it through a deletion event, and the audit log names the user only by a
hash."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass

from recsys.ports.cache import RecommendationCache
from recsys.ports.events import EventSink
from recsys.ports.features import FeatureStore
from recsys.ports.metadata import MetadataRepository
from recsys.ports.rate_limit import RateLimiter

logger = logging.getLogger(__name__)


def hashed_subject(user_id: str) -> str:
    """Audit records and logs name an erased user by a hash, not by the id itself."""
    return "sha256:" + hashlib.sha256(user_id.encode()).hexdigest()[:32]


def deletion_event_id(user_id: str) -> str:
    """Stable per user, so repeated erasure requests name the same event."""
    return "erase-" + hashlib.sha256(user_id.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Erasure:
    deleted_keys: int
    deleted_interactions: int
    profile_erased: bool
    deletion_event_id: str


class UserDataEraser:
    def __init__(
        self,
        *,
        features: FeatureStore,
        cache: RecommendationCache,
        metadata: MetadataRepository,
        events: EventSink,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.features = features
        self.cache = cache
        self.metadata = metadata
        self.events = events
        self.limiter = limiter

    async def erase(self, user_id: str, *, request_id: str = "", caller: str = "") -> Erasure:
        """Every step is idempotent; a failing store propagates (UNAVAILABLE) so the caller
        retries the whole erasure. The audit record names the authenticated `caller` who asked
        ("" when unknown: authentication off, or a command-line erasure)."""
        event_id = deletion_event_id(user_id)
        feature_keys, cache_keys, limit_keys, erased = await asyncio.gather(
            self.features.delete_user(user_id),
            self.cache.delete_user(user_id),
            self.limiter.reset(user_id) if self.limiter is not None else _nothing(),
            self.metadata.erase_user(user_id),
        )
        await self.events.publish_user_deletion(user_id, event_id)
        deleted_keys = feature_keys + cache_keys + limit_keys
        subject = hashed_subject(user_id)
        await self.metadata.write_audit(
            "erase_user",
            subject,
            {
                "deleted_keys": deleted_keys,
                "deleted_interactions": erased.deleted_interactions,
                "profile_erased": erased.profile_erased,
                "deletion_event_id": event_id,
                "request_id": request_id,
                "caller": caller,
            },
        )
        logger.info(
            "user data erased",
            extra={"subject": subject, "deleted_keys": deleted_keys, "caller": caller},
        )
        return Erasure(deleted_keys, erased.deleted_interactions, erased.profile_erased, event_id)


async def _nothing() -> int:
    return 0
