"""The wire bytes of a packed float column, merged into a message, equal extending the field."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.servicers.convert import packed_floats
from recsys.v1 import rank_service_pb2 as rank_pb2
from recsys.v1 import retrieve_service_pb2 as retrieve_pb2


@pytest.mark.parametrize("count", [0, 1, 31, 32, 5000])
def test_packed_floats_equal_extending_the_field(count: int) -> None:
    values = np.random.default_rng(count).normal(size=count).astype(np.float32)
    if count:
        values[0] = np.float32(np.inf)
    expected = rank_pb2.RankResponse(model_version="m", item_ids=[7])
    expected.scores.extend(values.tolist())
    merged = rank_pb2.RankResponse(model_version="m", item_ids=[7])
    merged.MergeFromString(packed_floats(rank_pb2.RankResponse.SCORES_FIELD_NUMBER, values))
    assert merged == expected
    assert merged.SerializeToString() == expected.SerializeToString()


def test_packed_floats_keep_nan_and_name_the_field() -> None:
    values = np.array([np.nan, -0.0, 1.5], np.float64)  # converted to float32 on the way
    response = retrieve_pb2.RetrieveResponse()
    response.MergeFromString(
        packed_floats(retrieve_pb2.RetrieveResponse.SCORES_FIELD_NUMBER, values)
    )
    scores = np.array(response.scores, np.float32)
    assert np.isnan(scores[0])
    assert scores[1:].tolist() == [0.0, 1.5]
    assert np.signbit(scores[1])
    assert not response.item_ids
    assert not response.candidates
