"""The message format: every message round-trips exactly, and no payload crashes the decoder."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgeflow.runtime import wire

DTYPES = sorted(wire.DTYPES)

arrays = st.sampled_from(DTYPES).flatmap(lambda d: hnp.arrays(
    np.dtype(d), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
names = st.text(min_size=1, max_size=12)
hops = st.tuples(names, *[st.floats(0, 2e9, allow_nan=False)] * 3)


@st.composite
def messages(draw: st.DrawFn) -> wire.Message:
    return wire.Message(
        app=draw(names), unit=draw(names), replica=draw(st.integers(0, 10**6)),
        frame=draw(st.integers(0, 2**53)), captured=draw(st.floats(0, 2e9)),
        seq=draw(st.integers(0, 2**53)),
        tensors=draw(st.dictionaries(names, arrays, max_size=4)),
        trace=tuple(draw(st.lists(hops, max_size=4))))


@given(messages())
def test_every_message_round_trips(message: wire.Message) -> None:
    back = wire.decode(wire.encode(message))
    assert (back.app, back.unit, back.replica, back.frame, back.captured, back.seq,
            back.trace) == (message.app, message.unit, message.replica, message.frame,
                            message.captured, message.seq, message.trace)
    assert list(back.tensors) == list(message.tensors)
    for name, array in message.tensors.items():
        got = back.tensors[name]
        assert got.dtype == array.dtype and got.shape == array.shape
        assert got.tobytes() == np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"),
                                                                   copy=False).tobytes()


def test_tensors_are_little_endian_c_order() -> None:
    a = np.arange(6, dtype=">i4").reshape(2, 3).T  # big-endian and Fortran order
    payload = wire.encode(wire.Message("a", "u", 0, 1, 0.0, 0, {"x": a}))
    back = wire.decode(payload)
    assert (back.tensors["x"] == a).all()
    assert payload.endswith(np.ascontiguousarray(a, dtype="<i4").tobytes())


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    try:
        wire.decode(data)
    except wire.WireError:
        pass


@given(messages(), st.data())
def test_a_corrupted_message_is_decoded_or_refused_never_a_crash(
        message: wire.Message, data: st.DataObject) -> None:
    payload = bytearray(wire.encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(payload)))
    for candidate in (bytes(payload), bytes(payload[:cut])):
        try:
            wire.decode(candidate)
        except wire.WireError:
            pass


@pytest.mark.parametrize("header", [
    b"[]", b'{"tensors": 3}', (b'{"tensors": [{"name": "x", "dtype": "object", "shape": [1], '
    b'"offset": 0, "length": 8}]}'), b"\xff\xfe", b'{"tensors": [], "app": 1}',
])
def test_bad_headers_are_refused(header: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(wire.PREFIX.pack(wire.MAGIC, wire.VERSION, len(header)) + header)


def test_a_tensor_whose_shape_disagrees_with_its_bytes_is_refused() -> None:
    payload = wire.encode(wire.Message("a", "u", 0, 1, 0.0, 0, {"x": np.zeros(4, "float32")}))
    with pytest.raises(wire.WireError, match="disagree"):
        wire.decode(payload[:-1])
