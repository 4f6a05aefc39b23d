"""The ranking model on any KServe V2 gRPC server (NVIDIA Triton in production) through
`tritonclient.grpc.aio`.

TLS and the bearer token come from `outbound.model_server_tls` and the "model_server" token
through the shared channel factory (`recsys.adapters.channels.channel_security`).

Input and output names and the feature width come from the server's model metadata, checked
against the feature schema in the model repository; the maximum batch size from the model
config when the server offers Triton's ModelConfig RPC, else from settings. Every call has a
timeout bounded by the caller's remaining time; large requests are split into batches.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferenceServerClientPlugin, InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from recsys.adapters.channels import ChannelSecurity, channel_security, reconnect_options
from recsys.adapters.grpc_errors import translate, translate_status
from recsys.domain.ranking import RANKING_FEATURES
from recsys.errors import DeadlineExceeded, FailedPrecondition, RecsysError, Unavailable
from recsys.ports.ranker import Ranker
from recsys.ranking.model_repository import FeatureSchema, check_schema
from recsys.settings import OutboundSettings, RecsysSettings

logger = logging.getLogger(__name__)

# Passing channel_args replaces tritonclient's defaults, so the message limits are restated.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    *reconnect_options(max_backoff_ms=1000),
]

_CODES_BY_NAME = {code.name: code for code in grpc.StatusCode}


def _translate(error: InferenceServerException, url: str) -> RecsysError:
    """tritonclient keeps the status code only as its name (`str(grpc.StatusCode.X)`); the
    shared rule of `grpc_errors` decides from there. An exception without a status was raised
    by tritonclient before sending anything, over inputs we built: a refusal of our request."""
    status = str(error.status() or "")
    if not status:
        code = grpc.StatusCode.INVALID_ARGUMENT
    else:
        code = _CODES_BY_NAME.get(status.removeprefix("StatusCode."), grpc.StatusCode.UNKNOWN)
    return translate_status(code, error.message() or "", f"inference server {url}")


class _Headers(InferenceServerClientPlugin):  # type: ignore[misc]
    """tritonclient's hook for headers on every call: the bearer token."""

    def __init__(self, security: ChannelSecurity) -> None:
        self._security = security

    def __call__(self, request: Any) -> None:
        request.headers.update(self._security.metadata())


class TritonRanker(Ranker):
    in_process = False

    def __init__(
        self,
        url: str,
        model_name: str,
        *,
        model_version: str = "",
        schema: FeatureSchema | None = None,
        max_batch_size: int = 1024,
        outbound: OutboundSettings | None = None,
    ) -> None:
        self.url = url
        self.model_name = model_name
        self.requested_version = model_version
        # Without a schema (the repository is not readable here), the model's input width
        # decides at connect: features are only ever appended, so a narrower model reads the
        # first columns (a model trained before the candidate-source features).
        self._schema_given = schema is not None
        self.schema = schema or FeatureSchema(features=RANKING_FEATURES)
        self.max_batch_size = max_batch_size
        security = channel_security("model_server", outbound or OutboundSettings(), url)
        # A restarted model server must be reachable by the breaker's next probe.
        self._client = triton_aio.InferenceServerClient(
            url=url,
            creds=security.credentials,
            channel_args=[*CHANNEL_ARGS, *security.options],
        )
        if security.token is not None:
            self._client.register_plugin(_Headers(security))
        self._served_version = model_version
        self._input_name = self.schema.input_name
        self._output_name = self.schema.output_name

    @classmethod
    def from_settings(cls, settings: RecsysSettings) -> TritonRanker:
        rank = settings.rank
        return cls(
            rank.triton_url,
            rank.model_name,
            # "" lets the server pick its latest; a release pins it (recsys.composition).
            model_version=rank.model_version,
            schema=_repository_schema(settings),
            max_batch_size=rank.triton_max_batch_size,
            outbound=settings.outbound,
        )

    @property
    def model_version(self) -> str:
        return f"{self.model_name}:{self._served_version or 'latest'}"

    async def start(self) -> None:
        await self.connect()

    async def ping(self, *, timeout: float) -> None:
        try:
            await self._client.get_model_metadata(
                self.model_name, self.requested_version, client_timeout=timeout
            )
        except InferenceServerException as error:
            raise _translate(error, self.url) from None

    async def connect(self, timeout: float = 5.0) -> None:
        """Reads the model's metadata and checks it against the schema; FailedPrecondition
        when it does not match (the model is refused), Unavailable when unreachable."""
        check_schema(self.schema, f"{self.model_name} (schema for the inference server)")
        try:
            metadata = await self._client.get_model_metadata(
                self.model_name, self.requested_version, client_timeout=timeout
            )
        except InferenceServerException as error:
            raise _translate(error, self.url) from None
        inputs = {tensor.name: list(tensor.shape) for tensor in metadata.inputs}
        outputs = {tensor.name for tensor in metadata.outputs}
        if self._input_name not in inputs or self._output_name not in outputs:
            raise FailedPrecondition(
                f"{self.model_name} on {self.url} has inputs {sorted(inputs)} and outputs "
                f"{sorted(outputs)}; the schema names {self._input_name} and {self._output_name}",
                reason="FEATURE_SCHEMA_MISMATCH",
            )
        width = inputs[self._input_name][-1] if inputs[self._input_name] else -1
        if not self._schema_given and width == -1:
            raise FailedPrecondition(
                f"{self.model_name} on {self.url} takes a variable number of features and no "
                "feature schema could be read for it: make its version folder readable under "
                "rank.model_repository",
                reason="FEATURE_SCHEMA_MISMATCH",
            )
        if not self._schema_given and 0 < width < len(RANKING_FEATURES):
            self.schema = self.schema.model_copy(update={"features": RANKING_FEATURES[:width]})
            logger.warning(
                "no feature schema for the served model: it takes the first features",
                extra={"model": self.model_name, "features": width},
            )
        if width not in (-1, len(self.schema.features)):
            raise FailedPrecondition(
                f"{self.model_name} on {self.url} takes {width} features, its schema names "
                f"{len(self.schema.features)}",
                reason="FEATURE_SCHEMA_MISMATCH",
            )
        if metadata.versions:
            self._served_version = self.requested_version or max(metadata.versions, key=int)
        try:
            config = await self._client.get_model_config(
                self.model_name, self.requested_version, client_timeout=timeout
            )
            if config.config.max_batch_size > 0:
                self.max_batch_size = config.config.max_batch_size
        except InferenceServerException:
            pass  # KServe V2 servers without Triton's ModelConfig RPC: keep the setting
        logger.info(
            "inference server model ready",
            extra={"url": self.url, "model_version": self.model_version,
                   "max_batch_size": self.max_batch_size},
        )  # fmt: skip

    async def score(
        self, features: npt.NDArray[np.float32], *, timeout: float
    ) -> npt.NDArray[np.float32]:
        features = self.schema.project(features)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        parts = []
        for start in range(0, len(features), self.max_batch_size):
            batch = np.ascontiguousarray(features[start : start + self.max_batch_size])
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeadlineExceeded("the inference server did not answer in time")
            parts.append(await self._infer(batch, remaining))
        if not parts:
            return np.empty(0, dtype=np.float32)
        return np.concatenate(parts)

    async def _infer(
        self, batch: npt.NDArray[np.float32], timeout: float
    ) -> npt.NDArray[np.float32]:
        request = InferInput(self._input_name, list(batch.shape), "FP32")
        request.set_data_from_numpy(batch)
        try:
            result: Any = await self._client.infer(
                self.model_name,
                [request],
                model_version=self.requested_version,
                outputs=[InferRequestedOutput(self._output_name)],
                client_timeout=timeout,
            )
        except InferenceServerException as error:
            raise _translate(error, self.url) from None
        except grpc.RpcError as error:
            raise translate(error, f"inference server {self.url}") from None
        except OSError as error:
            raise Unavailable(f"inference server {self.url}: {error}") from None
        scores = result.as_numpy(self._output_name)
        if scores is None:
            raise FailedPrecondition(
                f"the inference server returned no {self._output_name}",
                reason="MODEL_REFUSED_INPUT",
            )
        return np.asarray(scores, dtype=np.float32).reshape(-1)

    async def close(self) -> None:
        await self._client.close()


def _repository_schema(settings: RecsysSettings) -> FeatureSchema | None:
    """The served version's feature schema from the model repository the inference server
    loads (`rank.model_repository`, shared with it); None (every feature) when it cannot be
    read here."""
    from recsys.ranking.model_repository import ModelRepository

    rank = settings.rank
    try:
        return (
            ModelRepository(rank.model_repository, rank.model_name)
            .read(rank.model_version or None)
            .schema
        )
    except RecsysError:
        return None
