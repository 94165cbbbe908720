import numpy as np
import pytest

from mpips.transport.message import HEADER, Message, Op, decode, encode


def wire(msg):
    return np.concatenate(encode(msg))


def test_roundtrip_with_pieces_and_meta():
    keys = np.arange(10, dtype=np.uint64)
    vals = np.arange(30, dtype=np.float64).reshape(10, 3)
    msg = Message(op=Op.PUSH, table=2, ts=77, aux=-5, keys=[keys[:4], keys[4:]],
                  vals=[vals[:4], vals[4:]], vdim=3, meta=b'{"a":1}')
    buf = wire(msg)
    assert (buf.size - len(msg.meta)) % 8 == 0  # sections before meta stay aligned
    out = decode(buf, source=3)
    assert (out.op, out.table, out.ts, out.aux, out.sender) == (Op.PUSH, 2, 77, -5, 3)
    np.testing.assert_array_equal(out.keys, keys)
    np.testing.assert_array_equal(out.vals, vals)
    assert out.json() == {"a": 1}
    # views, not copies
    assert np.shares_memory(out.keys, buf) and np.shares_memory(out.vals, buf)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_value_dtypes_and_odd_sizes(dtype):
    vals = np.arange(3, dtype=dtype).reshape(3, 1)
    out = decode(wire(Message(op=Op.PULL_REPLY, vals=vals, vdim=1)), 0)
    assert out.vals.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out.vals, vals)


def test_empty_and_bad_messages():
    out = decode(wire(Message(op=Op.PULL, keys=np.empty(0, np.uint64))), 1)
    assert out.keys.size == 0 and out.vals is None
    with pytest.raises(ValueError, match="shorter than a header"):
        decode(np.zeros(8, np.uint8), 4)
    with pytest.raises(ValueError, match="bad magic"):
        decode(np.zeros(HEADER.itemsize, np.uint8), 4)
    with pytest.raises(TypeError, match="keys must be uint64"):
        encode(Message(op=Op.PUSH, keys=np.arange(3)))
