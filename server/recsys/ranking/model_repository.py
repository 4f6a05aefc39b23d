"""The ranking model repository, in Triton's layout:

    <root>/<model_name>/config.pbtxt
    <root>/<model_name>/<version>/model.onnx
    <root>/<model_name>/<version>/feature_schema.json

The feature schema is versioned with the model: it names the model's input and output tensors
and lists its features in column order. The Rank service assembles every feature it knows
(`RANKING_FEATURES`) and hands each model the columns its schema names, in its order, so a
model trained before a feature was added keeps serving. A version whose schema names a feature
the Rank service does not assemble (or one twice) is refused (FAILED_PRECONDITION) and never
served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError

from recsys.domain.ranking import RANKING_FEATURES, feature_columns
from recsys.errors import FailedPrecondition, NotFound

MODEL_FILE = "model.onnx"
SCHEMA_FILE = "feature_schema.json"


class FeatureSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: int = 1
    input_name: str = "features"
    output_name: str = "scores"
    features: tuple[str, ...]

    def project(self, features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The model's input from the assembled matrix (every column of RANKING_FEATURES)."""
        columns = feature_columns(self.features)
        if columns is None:
            return features
        return np.ascontiguousarray(features[:, columns])


class SchemaMismatch(FailedPrecondition):
    default_reason = "FEATURE_SCHEMA_MISMATCH"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path
    schema: FeatureSchema

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"


def check_schema(schema: FeatureSchema, where: str) -> None:
    try:
        feature_columns(schema.features)
    except ValueError as error:
        raise SchemaMismatch(
            f"{where}: the model's feature schema names features the Rank service does not "
            f"assemble ({error}; it assembles {list(RANKING_FEATURES)})"
        ) from error
    if not schema.features:
        raise SchemaMismatch(f"{where}: the model's feature schema names no feature")


class ModelRepository:
    def __init__(self, root: Path, model_name: str = "ranker") -> None:
        self.root = Path(root)
        self.model_name = model_name

    @property
    def model_folder(self) -> Path:
        return self.root / self.model_name

    def versions(self) -> list[str]:
        """Version folders, newest (highest number) first."""
        if not self.model_folder.is_dir():
            return []
        numbered = [p.name for p in self.model_folder.iterdir() if p.is_dir() and p.name.isdigit()]
        return sorted(numbered, key=int, reverse=True)

    def read(self, version: str | None = None) -> ModelVersion:
        """A version (default: the newest) with its schema checked."""
        versions = self.versions()
        if not versions:
            raise NotFound(f"no versions of model {self.model_name} under {self.root}")
        version = version or versions[0]
        path = self.model_folder / version
        if version not in versions:
            raise NotFound(f"model {self.model_name} has no version {version}")
        where = f"{self.model_name} version {version}"
        try:
            schema = FeatureSchema.model_validate_json((path / SCHEMA_FILE).read_text())
        except FileNotFoundError as error:
            raise SchemaMismatch(f"{where} has no {SCHEMA_FILE}") from error
        except ValidationError as error:
            raise SchemaMismatch(f"{where}: invalid {SCHEMA_FILE}: {error}") from error
        check_schema(schema, where)
        if not (path / MODEL_FILE).is_file():
            raise FailedPrecondition(f"{where} has no {MODEL_FILE}", reason="MODEL_MISSING")
        return ModelVersion(self.model_name, version, path, schema)


def write_schema(path: Path, schema: FeatureSchema) -> None:
    path.write_text(json.dumps(schema.model_dump(mode="json"), indent=2) + "\n")
