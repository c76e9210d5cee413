"""Fuzzing the training-record decoder (`decode_record`, then decoding the frames as the loader does): random
and truncated bytes, wrong magic and version, bad CRC, and (with the CRC recomputed so the payload is
reached) mutated and random msgpack payloads with wrong types, shapes and dtypes. Every input must decode
or raise `RecordError` (a ValueError) with one line."""

import struct
import zlib

import msgpack
from dp_records import make_test_record
from fuzzing import EXAMPLES, FUZZ, outcome, report
from hypothesis import given
from hypothesis import strategies as st

from data_pipeline.schema import _HEADER, MAGIC, SCHEMA_VERSION, RecordError, decode_record, encode_record

VALID = encode_record(make_test_record())
PAYLOAD = msgpack.unpackb(VALID[_HEADER.size :], raw=False)


def framed(body: bytes, version: int = SCHEMA_VERSION) -> bytes:
    return _HEADER.pack(MAGIC, version, zlib.crc32(body) & 0xFFFFFFFF) + body


msgpack_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=8),
        st.binary(max_size=16),
    ),
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=6), kids, max_size=4)),
    max_leaves=20,
)
array_like = st.fixed_dictionaries(
    {
        "__nd__": st.sampled_from([1, 1, 1, 2, "1"]),
        "dtype": st.sampled_from(["float32", "uint8", "bool", "int64", "object", "V8", 3]),
        "shape": st.one_of(st.lists(st.integers(-2, 2**40), max_size=9), msgpack_values),
        "data": st.one_of(st.binary(max_size=64), msgpack_values),
    }
)


@st.composite
def record_bytes(draw):
    kind = draw(st.sampled_from(["raw", "flip", "truncate", "version", "field", "payload"]))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "truncate":
        return VALID[: draw(st.integers(0, len(VALID) - 1))]
    if kind == "flip":  # the CRC catches these
        b = bytearray(VALID)
        for _ in range(draw(st.integers(1, 4))):
            b[draw(st.integers(0, len(b) - 1))] ^= draw(st.integers(1, 255))
        return bytes(b)
    if kind == "version":
        return framed(VALID[_HEADER.size :], draw(st.integers(0, 65535)))
    if kind == "field":  # one field replaced, CRC recomputed: the decoder's own checks are reached
        p = dict(PAYLOAD)
        name = draw(st.sampled_from(sorted(p) + ["text_embedding", "source_depth", "extra"]))
        if draw(st.booleans()) and name in p:
            del p[name]
        else:
            p[name] = draw(st.one_of(msgpack_values, array_like))
        return framed(msgpack.packb(p, use_bin_type=True))
    return framed(msgpack.packb(draw(msgpack_values), use_bin_type=True)) + draw(st.binary(max_size=4))


def decode_with_frames(data: bytes):
    rec = decode_record(data)
    rec.video("source")
    rec.video("target")
    return rec


def test_valid_record_round_trips():
    rec = decode_with_frames(VALID)
    assert encode_record(rec) == VALID


def test_fuzz_record_decoder():
    @FUZZ
    @given(record_bytes())
    def run(data):
        outcome("training record", decode_with_frames, data, errors=(RecordError,))

    run()
    counts = report("training record")
    assert counts["ok"] + counts["refused"] >= EXAMPLES
    assert counts["ok"] and counts["refused"]


def test_header_cases_name_the_problem():
    cases = {
        b"": "shorter than its",
        b"NOPE" + VALID[4:]: "bad magic",
        framed(VALID[_HEADER.size :], SCHEMA_VERSION + 1): "schema version",
        VALID[:-1] + bytes([VALID[-1] ^ 1]): "checksum mismatch",
        framed(
            msgpack.packb({**PAYLOAD, "source_xyz": {**PAYLOAD["source_xyz"], "shape": [2**40, 2**40]}})
        ): "bytes for",
    }
    for data, words in cases.items():
        try:
            decode_record(data)
        except RecordError as e:
            assert words in str(e) and "\n" not in str(e), str(e)
        else:
            raise AssertionError(words)
    assert struct.unpack_from("<4sHI", VALID)[0] == MAGIC
