"""The answer's degradation on the wire: every domain field has its proto field, and a candidate
source that failed is named by its CandidateSource value."""

from __future__ import annotations

import dataclasses

from recsys.domain.candidates import SourceKind
from recsys.domain.recommend.values import Degradation, Flag, Recommendation
from recsys.servicers.recommend import to_proto
from recsys.v1 import common_pb2, recommend_service_pb2


def test_every_degradation_field_is_on_the_wire() -> None:
    domain = {field.name for field in dataclasses.fields(Degradation)}
    wire = set(recommend_service_pb2.Degradation.DESCRIPTOR.fields_by_name)
    assert domain == wire


def test_each_flag_alone_maps_to_its_proto_field() -> None:
    for flag in Flag:
        degradation = to_proto(Recommendation((), degradation=Degradation.of([flag]))).degradation
        raised = [
            field.name
            for field, value in degradation.ListFields()
            if field.type == field.TYPE_BOOL and value
        ]
        assert raised == [flag.value]


def test_partial_candidates_names_the_failed_sources() -> None:
    degradation = Degradation.of(
        [Flag.PARTIAL_CANDIDATES, Flag.PARTIAL_RETRIEVAL],
        failed_shard_ids=[3, 1, 3],
        failed_candidate_sources=[
            SourceKind.POPULARITY.value,
            SourceKind.NEIGHBOURS.value,
            SourceKind.POPULARITY.value,
        ],
    )
    assert degradation.failed_candidate_sources == ("neighbours", "popularity")
    assert degradation.kinds() == ["partial_retrieval", "partial_candidates"]
    assert Flag.PARTIAL_CANDIDATES in degradation.flags()
    wire = to_proto(Recommendation((), degradation=degradation)).degradation
    assert wire.partial_candidates
    assert wire.partial_retrieval
    assert list(wire.failed_shard_ids) == [1, 3]
    assert list(wire.failed_candidate_sources) == [
        common_pb2.CANDIDATE_SOURCE_NEIGHBOURS,
        common_pb2.CANDIDATE_SOURCE_POPULARITY,
    ]


def test_every_source_kind_has_a_wire_value_and_unknown_names_are_left_out() -> None:
    degradation = Degradation(
        partial_candidates=True,
        failed_candidate_sources=(*(kind.value for kind in SourceKind), "a-newer-source"),
    )
    wire = to_proto(Recommendation((), degradation=degradation)).degradation
    assert [common_pb2.CandidateSource.Name(value) for value in wire.failed_candidate_sources] == [
        "CANDIDATE_SOURCE_RETRIEVAL",
        "CANDIDATE_SOURCE_NEIGHBOURS",
        "CANDIDATE_SOURCE_POPULARITY",
    ]


def test_a_healthy_answer_sets_no_degradation() -> None:
    wire = to_proto(Recommendation(())).degradation
    assert wire == recommend_service_pb2.Degradation()
