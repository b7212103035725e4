"""Task results as data, never as code: a JSON codec for pmpo's result types, and a result storage that refuses
to hand Prefect anything else.

Prefect's default result format is pickle, and a persisted result record names its own serializer in its
metadata: a file planted in the results directory that says "pickle" would be unpickled (code run) on the next
rerun whatever serializer the task asked for. So:

- `PmpoJSONSerializer` ("pmpo-json") writes a result as JSON. Values are tagged by kind (tuple, dict with any
  keys, non-finite float, numpy array of numbers, frozen dataclass). A dataclass is rebuilt only when its
  qualified name is on the allow-list (`allow`), field by field, so a new field needs no codec change; nothing
  is imported or called by name from the file.
- Records and values are stored apart (Prefect's cache-policy `key_storage`): the record (metadata: serializer,
  where the value is) in one folder, the value in another. `SafeRecordStorage` is the record storage. Before
  Prefect parses a record it reads the raw bytes with `json.loads` (safe), and passes them on only when the
  serializer named is ours and the value it points to decodes with our codec. Anything else (a pickle, a record
  naming "pickle" or Prefect's "json" serializer, which imports classes by name, a value that does not decode)
  is logged as a warning and is a cache miss: the task recomputes and overwrites it. Prefect only ever reads a
  value through the serializer its checked record names, so no file there is unpickled either.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import typing
from typing import Any

import numpy as np
from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.serializers import Serializer
from pydantic import Field

from pmpo.evaluation.heldout import Evaluation
from pmpo.loop.result import Candidate, Iteration, OptimizeResult, SegmentEffect
from pmpo.scoring.loss import LossMatrix

logger = logging.getLogger(__name__)

SERIALIZER = "pmpo-json"
_NUMERIC_KINDS = "biuf"  # bool, int, unsigned, float arrays only: an object array could hold anything
_ALLOWED: dict[str, type] = {}


class UnsafeResult(ValueError):
    """A persisted result that is not pmpo's JSON, or names a type that is not allowed."""


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def allow(*classes: type) -> None:
    """Put dataclasses (and the dataclasses their fields name) on the list of types a result may rebuild."""
    for cls in classes:
        if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
            raise TypeError(f"{cls!r} is not a dataclass")
        if _ALLOWED.setdefault(_name(cls), cls) is not cls:
            continue
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # an unresolvable annotation only means nested types must be allowed by hand
            hints = {}
        allow(
            *(
                t
                for h in hints.values()
                for t in _mentioned(h)
                if dataclasses.is_dataclass(t) and t not in _ALLOWED.values()
            )
        )


def _mentioned(hint: Any) -> list[Any]:
    return [hint, *(t for arg in typing.get_args(hint) for t in _mentioned(arg))]


def encode(value: Any) -> Any:
    """A JSON-able, tagged form of `value` that `decode` turns back into an equal value."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in _NUMERIC_KINDS:
        return encode(value.item())
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else {"float": repr(float(value))}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        if type(value) is not tuple:  # a NamedTuple would come back as a plain tuple, its names lost
            raise TypeError(f"no JSON codec for a {type(value).__name__}: use a frozen dataclass")
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {"frozenset" if isinstance(value, frozenset) else "set": [encode(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, np.ndarray):
        return _encode_array(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = _name(type(value))
        if _ALLOWED.get(name) is not type(value):
            raise TypeError(f"{name} is not an allowed result type: add it with tasks.serialization.allow")
        fields = {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return {"dataclass": name, "fields": fields}
    raise TypeError(f"no JSON codec for a {type(value).__name__}: extend tasks.serialization.encode")


def _encode_array(a: np.ndarray) -> dict:
    if a.dtype.kind not in _NUMERIC_KINDS:
        raise TypeError(f"only numeric arrays are persisted, not dtype {a.dtype}")
    data = base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()  # exact bits: NaN, inf and -0.0 survive
    return {"ndarray": {"dtype": a.dtype.str, "shape": list(a.shape), "data": data}}


def decode(data: Any) -> Any:
    """The value `encode` made `data` from; `UnsafeResult` for anything it would not have made."""
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict) or len(data) not in (1, 2):
        raise UnsafeResult(f"unexpected value in a result: {str(data)[:80]}")
    tag = next(iter(data))
    body = data[tag]
    if tag == "float" and body in ("inf", "-inf", "nan"):
        return float(body)
    if tag in ("tuple", "set", "frozenset") and isinstance(body, list):
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](decode(v) for v in body)
    if tag == "dict" and isinstance(body, list) and all(isinstance(kv, list) and len(kv) == 2 for kv in body):
        return {decode(k): decode(v) for k, v in body}
    if tag == "ndarray" and isinstance(body, dict):
        return _decode_array(body)
    if tag == "dataclass" and set(data) == {"dataclass", "fields"} and isinstance(data["fields"], dict):
        cls = _ALLOWED.get(body) if isinstance(body, str) else None
        if cls is None:
            raise UnsafeResult(f"result names a type that is not allowed: {str(body)[:80]}")
        return cls(**{str(k): decode(v) for k, v in data["fields"].items()})
    raise UnsafeResult(f"unexpected value in a result: {str(data)[:80]}")


def _decode_array(body: dict) -> np.ndarray:
    dtype = np.dtype(str(body.get("dtype")))
    if dtype.kind not in _NUMERIC_KINDS:
        raise UnsafeResult(f"result holds an array of dtype {dtype}, not numbers")
    shape = tuple(int(n) for n in body.get("shape", []))
    return np.frombuffer(base64.b64decode(str(body.get("data", ""))), dtype=dtype).reshape(shape).copy()


class PmpoJSONSerializer(Serializer):
    """Prefect serializer for pmpo results: tagged JSON (see module doc), never pickle."""

    type: str = Field(default=SERIALIZER, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        """JSON bytes of a result."""
        return json.dumps(encode(obj), allow_nan=False).encode()

    def loads(self, blob: bytes) -> Any:
        """The result back from its JSON bytes."""
        return decode(json.loads(blob))


def check_metadata(content: bytes) -> str:
    """The value's storage key, if `content` is the metadata of a record `PmpoJSONSerializer` wrote; else `UnsafeResult`."""
    try:
        metadata = json.loads(content)
    except (UnicodeDecodeError, ValueError):
        raise UnsafeResult("not a JSON result record (e.g. a pickle)") from None
    serializer = metadata.get("serializer") if isinstance(metadata, dict) else None
    kind = serializer.get("type") if isinstance(serializer, dict) else None
    if kind != SERIALIZER or set(serializer) != {"type"}:
        raise UnsafeResult(f"result record uses serializer {str(kind)[:40]!r}, not {SERIALIZER!r}")
    if not isinstance(metadata.get("storage_key"), str) or metadata.get("storage_block_id") is not None:
        raise UnsafeResult("result record does not point into the local results directory")
    return metadata["storage_key"]


class _CheckedRecords:
    """What both record storages do: hand Prefect a record only once it is ours and its value decodes."""

    def _value_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    async def aread_path(self, path: str) -> bytes:
        """The record's bytes, after checking it (see `read_path`)."""
        return self._checked(path, await super().aread_path(path))

    def _checked(self, path: str, content: bytes) -> bytes:
        try:
            key = check_metadata(content)
            PmpoJSONSerializer().loads(self._value_bytes(key))
        except Exception as exc:  # whatever stops the value being read back, the step is recomputed
            logger.warning("ignoring cached result %s: %s; it will be recomputed and overwritten", path, exc)
            raise UnsafeResult(str(exc)) from None
        return content


class SafeRecordStorage(_CheckedRecords, LocalFileSystem):
    """Storage of result *records* (Prefect's cache-key metadata) that passes on only pmpo-json records whose value
    decodes; anything else is a logged cache miss. `values` is the folder of the values the records point to."""

    _block_type_name = "pmpo safe result records"
    _block_type_slug = "pmpo-safe-result-records"

    values: str = Field(description="folder of the result values the records point to")

    @async_dispatch(_CheckedRecords.aread_path)
    def read_path(self, path: str) -> bytes:  # Prefect's exists() and read() both come through here
        """The record's bytes, once it is known to be ours and its value decodes; `UnsafeResult` otherwise."""
        return self._checked(path, super().read_path(path, _sync=True))

    def _value_bytes(self, key: str) -> bytes:
        return LocalFileSystem(basepath=self.values).read_path(key, _sync=True)


class SafeRemoteRecordStorage(_CheckedRecords, RemoteFileSystem):
    """The same check over an fsspec URL (`s3://...`): records under `basepath`, values under the `values` URL."""

    _block_type_name = "pmpo safe remote result records"
    _block_type_slug = "pmpo-safe-remote-result-records"

    values: str = Field(description="URL of the result values the records point to")

    @async_dispatch(_CheckedRecords.aread_path)
    def read_path(self, path: str) -> bytes:
        """The record's bytes, once it is known to be ours and its value decodes; `UnsafeResult` otherwise."""
        return self._checked(path, super().read_path(path, _sync=True))

    def _value_bytes(self, key: str) -> bytes:
        return RemoteFileSystem(basepath=self.values, settings=self.settings).read_path(key, _sync=True)


allow(LossMatrix, SegmentEffect, Candidate, Iteration, Evaluation, OptimizeResult)
