"""The frames between the emulator's account process and its serving processes."""

from __future__ import annotations

import struct

import pytest

from loadgen.emulator import rpc


def test_messages_come_out_whole_however_the_bytes_are_split():
    messages = [
        (1, "admit", (b"\x30\x82" * 300,)),
        (-1, ("id", {"thing": None}, ("{}",))),
        (0, "x", ()),
    ]
    stream = b"".join(rpc.encode(m) for m in messages)
    decoder = rpc.Decoder()
    out = []
    for i in range(0, len(stream), 7):
        out += decoder.feed(stream[i : i + 7])
    assert out == messages


def test_several_messages_in_one_read_come_out_in_order():
    stream = rpc.encode((1, "a", ())) + rpc.encode((2, "b", ()))
    assert [m[1] for m in rpc.Decoder().feed(stream)] == ["a", "b"]


def test_a_length_past_the_largest_frame_is_a_broken_stream():
    with pytest.raises(rpc.FrameError, match="bytes"):
        rpc.Decoder().feed(struct.pack(">I", rpc.MAX_FRAME + 1))


def test_a_frame_that_is_not_a_message_is_a_broken_stream():
    with pytest.raises(rpc.FrameError):
        rpc.Decoder().feed(struct.pack(">I", 3) + b"\xff\xff\xff")
