"""An MLServer custom runtime serving recsys's ONNX ranker through ONNX Runtime, so that
tritonclient talks KServe V2 to a real inference server in tests (Triton cannot be installed
here). `RECSYS_TEST_MODEL_DELAY_SECONDS` makes every inference slow (timeout tests)."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import onnxruntime
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRanker(MLModel):
    async def load(self) -> bool:
        uri = self.settings.parameters.uri if self.settings.parameters else None
        self._session = onnxruntime.InferenceSession(uri, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        delay = float(os.environ.get("RECSYS_TEST_MODEL_DELAY_SECONDS", "0"))
        if delay:
            await asyncio.sleep(delay)
        features = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        (scores,) = self._session.run([self._output], {self._input: features})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(self._output, np.asarray(scores, np.float32))],
        )
