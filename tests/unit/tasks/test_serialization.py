"""Persisted task results are data, never code: every result type round-trips through the JSON codec, a pickle
planted where a rerun reads its cached result is never unpickled (the step recomputes, with a warning)."""

from __future__ import annotations

import base64
import collections
import dataclasses
import json
import logging
import math
import pickle

import numpy as np
import pytest

from pmpo.data.examples import Dataset, Supervised
from pmpo.evaluation.heldout import Evaluation
from pmpo.loop.result import Candidate, SegmentEffect
from pmpo.scoring.loss import LossMatrix
from tasks import serialization
from tasks.serialization import PmpoJSONSerializer, UnsafeResult


class _Plant:
    """Unpickling this creates the file at `path`: the attack the results directory must not allow."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@dataclasses.dataclass(frozen=True)
class _Inner:
    interval: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class _Grown:
    """A result type as other work may grow one: nested dataclasses, per-example tuples, optional fields."""

    inner: _Inner | None
    per_example: tuple[bool, ...]
    by_index: dict[int, float]
    arrays: list[np.ndarray]
    note: str | None = None


def _roundtrip(value):
    s = PmpoJSONSerializer()
    return s.loads(s.dumps(value))


def test_loss_matrix_round_trips_with_exact_bits():
    loss = np.array([[1.5, np.inf], [np.nan, -0.0]])
    matrix = LossMatrix(loss, np.arange(4.0).reshape(2, 2).astype(np.float32), np.array([[3, 4], [5, 6]]))
    back = _roundtrip(matrix)
    assert isinstance(back, LossMatrix)
    for name in ("loss", "nll", "tokens"):
        a, b = getattr(matrix, name), getattr(back, name)
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    assert back.hits is None  # a matrix recorded before hits existed still decodes
    with_hits = _roundtrip(LossMatrix(loss, loss, np.ones((2, 2), dtype=np.int64), np.array([[1.0, np.nan]] * 2)))
    assert with_hits.hits.tobytes() == np.array([[1.0, np.nan]] * 2).tobytes()


def test_mask_and_rewrite_results_round_trip():
    masked = (
        ["Read it.", "Be brief."],
        (SegmentEffect(0, "Read it.", 0.25, 0.125), SegmentEffect(1, "Be brief.", -math.inf)),
    )
    rewrites = (["A.", "B."], {"no_tags": 2, "duplicate": 0})
    assert _roundtrip(masked) == masked and isinstance(_roundtrip(masked)[1], tuple)
    assert _roundtrip(rewrites) == rewrites


def test_evaluation_and_candidate_round_trip_field_by_field():
    evaluation = Evaluation("Answer.", 3, 1.25, 0.5, None, 2 / 3)
    candidate = Candidate(
        "c1", None, 0, "initial", "Answer.", math.inf, math.nan, 8, dropped=True, gap_se=0.5, accuracy=0.75
    )
    assert _roundtrip(evaluation) == evaluation
    back = _roundtrip(candidate)
    assert back.loss == math.inf and math.isnan(back.loss_per_token) and back.dropped
    assert dataclasses.replace(back, loss_per_token=0.0) == dataclasses.replace(candidate, loss_per_token=0.0)


def test_new_fields_and_nested_types_need_no_codec_change():
    serialization.allow(_Grown)  # allows _Inner too: it is named in a field's type
    value = _Grown(_Inner((0.1, -math.inf)), (True, False), {3: 0.5, -1: math.nan}, [np.arange(3, dtype=np.int32)])
    back = _roundtrip(value)
    assert back.inner == value.inner and back.per_example == value.per_example and back.note is None
    assert back.by_index[3] == 0.5 and math.isnan(back.by_index[-1]) and list(back.by_index) == [3, -1]
    assert back.arrays[0].dtype == np.int32 and back.arrays[0].tolist() == [0, 1, 2]


def test_decoder_refuses_types_not_on_the_allow_list():
    forged = {"dataclass": "subprocess.Popen", "fields": {"args": ["touch", "/tmp/x"]}}
    with pytest.raises(UnsafeResult, match="not allowed"):
        serialization.decode(forged)
    with pytest.raises(UnsafeResult, match="dtype"):
        serialization.decode({"ndarray": {"dtype": "|O", "shape": [1], "data": ""}})
    with pytest.raises(TypeError, match="not an allowed result type"):
        PmpoJSONSerializer().dumps(dataclasses.make_dataclass("Stranger", ["x"])(1))
    with pytest.raises(TypeError, match="use a frozen dataclass"):
        PmpoJSONSerializer().dumps(collections.namedtuple("Pair", "a b")(1, 2))


def test_record_check_accepts_only_pmpo_json(tmp_path):
    marker = tmp_path / "ran"
    foreign = {"serializer": {"type": "pickle", "picklelib": "pickle"}, "storage_key": "k"}
    prefect_json = {"serializer": {"type": "json"}, "storage_key": "k"}
    ours = {"serializer": {"type": "pmpo-json"}, "storage_key": "k", "storage_block_id": None}
    for bad in (pickle.dumps(_Plant(str(marker))), json.dumps(foreign).encode(), json.dumps(prefect_json).encode()):
        with pytest.raises(UnsafeResult):
            serialization.check_metadata(bad)
    assert serialization.check_metadata(json.dumps(ours).encode()) == "k"
    assert not marker.exists()


@pytest.mark.usefixtures("prefect_harness")
def test_planted_pickle_under_the_rerun_key_is_not_executed(pmpo_home, tiny_model_dir, tmp_path, caplog):
    from prefect import flow

    from flows.steps import PrefectSteps
    from pmpo.loop.optimizer import OptimizerConfig
    from pmpo.models.loading import ModelSettings
    from tasks.environment import results_dir
    from tasks.models import model_ref

    ref = model_ref(ModelSettings(spec=str(tiny_model_dir), dtype="float32"))
    data = Dataset("t", (Supervised("good film", "positive"), Supervised("bad film", "negative")))

    @flow
    def losses():
        steps = PrefectSteps(ref, OptimizerConfig())
        matrix = steps.losses(["Classify the review."], data, 0)
        return matrix, steps.work.runs[-1].cached

    first, cached = losses()
    assert not cached
    (record,) = (results_dir() / "records").iterdir()  # what the rerun's cache key reads first
    (value,) = (results_dir() / "values").iterdir()
    assert json.loads(record.read_bytes())["serializer"] == {"type": "pmpo-json"}
    assert losses()[1]  # the honest record is served from the cache
    honest = record.read_bytes()

    marker = tmp_path / "planted-code-ran"
    payload = pickle.dumps(_Plant(str(marker)))
    pickle_record = {"serializer": {"type": "pickle", "picklelib": "pickle"}, "storage_key": str(value)}
    attacks = [  # (record bytes, value bytes) planted under the key the rerun reads
        (json.dumps(pickle_record).encode(), base64.b64encode(payload)),  # a record that names pickle
        (payload, payload),  # a bare pickle in place of the record
        (honest, payload),  # our record, a pickle in place of the value
    ]
    for planted_record, planted_value in attacks:
        record.write_bytes(planted_record)
        value.write_bytes(planted_value)
        with caplog.at_level(logging.WARNING, logger="tasks.serialization"):
            again, cached = losses()
        assert not marker.exists()  # never unpickled
        assert not cached and np.array_equal(again.loss, first.loss)  # recomputed instead
        assert "ignoring cached result" in caplog.text
        assert json.loads(record.read_bytes())["serializer"] == {"type": "pmpo-json"}  # overwritten
        caplog.clear()

    # A write cut short (disk full, a kill mid-write): Prefect writes the value, then the record, each straight into
    # its file. Half a record, or a whole record over half a value, is a cache miss, never a wrong result.
    honest_value = value.read_bytes()
    for planted_record, planted_value in ((honest[: len(honest) // 2], honest_value), (honest, honest_value[:40])):
        record.write_bytes(planted_record)
        value.write_bytes(planted_value)
        again, cached = losses()
        assert not cached and np.array_equal(again.loss, first.loss)
