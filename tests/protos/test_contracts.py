"""Contract tests on the recsys.v1 protos: conventions client teams rely on."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import grpc_tools
import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos"
PROTO_FILES = sorted(PROTO_DIR.glob("recsys/v1/*.proto"))
WKT_INCLUDE = Path(os.path.dirname(grpc_tools.__file__)) / "_proto"

# Fields a server rejects when empty: their comments must say "Required".
REQUIRED_FIELDS = {
    "recsys.v1.RecommendRequest": ["user_id", "surface", "limit"],
    "recsys.v1.DeleteUserDataRequest": ["user_id"],
    "recsys.v1.RankRequest": ["user_id"],
    "recsys.v1.InteractionEvent": ["event_time"],
}


def _compile(tmp_path: Path, *, source_info: bool) -> descriptor_pb2.FileDescriptorSet:
    output = tmp_path / ("with_info.binpb" if source_info else "plain.binpb")
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_DIR}",
        f"--proto_path={WKT_INCLUDE}",
        f"--descriptor_set_out={output}",
        *(["--include_source_info"] if source_info else []),
        *[str(path.relative_to(PROTO_DIR)) for path in PROTO_FILES],
    ]
    subprocess.run(command, check=True, capture_output=True)
    return descriptor_pb2.FileDescriptorSet.FromString(output.read_bytes())


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    return _compile(tmp_path_factory.mktemp("protos"), source_info=True)


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(location.path): location.leading_comments.strip()
        for location in file.source_code_info.location
    }


def test_every_file_is_in_package_recsys_v1(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    assert len(descriptor_set.file) == len(PROTO_FILES) >= 6
    for file in descriptor_set.file:
        assert file.package == "recsys.v1", file.name
        assert file.name.startswith("recsys/v1/"), file.name


def test_enum_zero_values_are_unspecified(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    enums = [enum for file in descriptor_set.file for enum in file.enum_type]
    assert {enum.name for enum in enums} >= {"InteractionType", "DeviceType", "RankingBackend"}
    for enum in enums:
        zero = next(value for value in enum.value if value.number == 0)
        assert zero.name.endswith("_UNSPECIFIED"), enum.name


def test_every_message_field_and_rpc_is_commented(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    # Source paths: 4 = message_type, 2 = field, 6 = service, 2 = method, 5 = enum_type.
    missing = []
    for file in descriptor_set.file:
        comments = _comments(file)
        for message_index, message in enumerate(file.message_type):
            if not comments.get((4, message_index)):
                missing.append(message.name)
            for field_index, field in enumerate(message.field):
                if not comments.get((4, message_index, 2, field_index)):
                    missing.append(f"{message.name}.{field.name}")
        for service_index, service in enumerate(file.service):
            for method_index, method in enumerate(service.method):
                if not comments.get((6, service_index, 2, method_index)):
                    missing.append(f"{service.name}.{method.name}")
    assert missing == []


def test_required_fields_are_documented_as_required(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    for file in descriptor_set.file:
        comments = _comments(file)
        for message_index, message in enumerate(file.message_type):
            full_name = f"{file.package}.{message.name}"
            for field_index, field in enumerate(message.field):
                if field.name in REQUIRED_FIELDS.get(full_name, []):
                    comment = comments[(4, message_index, 2, field_index)]
                    assert "Required" in comment, f"{full_name}.{field.name}: {comment}"


def test_rpcs_use_their_own_request_and_response(
    descriptor_set: descriptor_pb2.FileDescriptorSet,
) -> None:
    services = {service.name: service for file in descriptor_set.file for service in file.service}
    assert set(services) == {
        "RecommendService",
        "RetrieveService",
        "RankService",
        "IndexShardService",
        "IngestService",
    }
    for service in services.values():
        for method in service.method:
            assert method.input_type == f".recsys.v1.{method.name}Request"
            assert method.output_type == f".recsys.v1.{method.name}Response"


def test_item_ids_are_int64(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    int64_types = {
        descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    }
    checked = 0
    for file in descriptor_set.file:
        for message in file.message_type:
            for field in message.field:
                if field.name in {"item_id", "item_ids", "excluded_item_ids"}:
                    assert field.type in int64_types, f"{message.name}.{field.name}"
                    checked += 1
    assert checked >= 8


def test_generated_python_code_matches_the_protos(tmp_path: Path) -> None:
    """The committed generated modules were built from exactly these protos (no drift)."""
    compiled = {file.name: file for file in _compile(tmp_path, source_info=False).file}
    for name, file in compiled.items():
        _clear_json_names(file)  # protoc's Python generator leaves them out
        module_name = name.removesuffix(".proto").replace("/", ".") + "_pb2"
        module = importlib.import_module(module_name)
        generated = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        assert generated == file, f"{module_name} is stale: run `make protos`"


def _clear_json_names(file: descriptor_pb2.FileDescriptorProto) -> None:
    def clear(message: descriptor_pb2.DescriptorProto) -> None:
        for field in message.field:
            field.ClearField("json_name")
        for nested in message.nested_type:
            clear(nested)

    for message in file.message_type:
        clear(message)
