"""The loopback client's HTTP/1.1 reading, however the bytes are cut up on the way.

The real tritonserver tests (test_serving, test_cancellation, test_gateway, test_fast_engine) drive
it end to end; here the responses Triton sends are fed to it in pieces as small as one byte, as TCP
may deliver them, and must come out the same.
"""

from __future__ import annotations

import pytest
from loopback import Exchange, error_of, token_ids, values


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


EVENTS = [b'data: {"model_name":"tensorrt_llm","output_ids":504,"sequence_length":1}\n\n',
          b'data: {"model_name":"tensorrt_llm","output_ids":[33059,40061],"sequence_length":2}\n\n']
STREAM = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n"
          + chunked(*EVENTS))


def feed(exchange: Exchange, data: bytes, size: int) -> Exchange:
    for start in range(0, len(data), size):
        exchange.data_received(data[start:start + size])
    return exchange


@pytest.mark.parametrize("size", [1, 3, 7, len(STREAM)])
def test_events_come_out_whole_however_the_stream_is_cut(size: int):
    exchange = feed(Exchange(b"", events=True), STREAM, size)
    assert exchange.complete and exchange.status == 200
    assert list(exchange.events) == [event.removesuffix(b"\n\n") for event in EVENTS]


def test_an_event_split_over_two_chunks_is_one_event():
    head = STREAM.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    data = head + chunked(b'data: {"output_ids"', b':7,"sequence_length":1}\n\n')
    exchange = feed(Exchange(b"", events=True), data, 5)
    assert list(exchange.events) == [b'data: {"output_ids":7,"sequence_length":1}']


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_a_content_length_body_completes_at_its_length(size: int):
    body = b'{"outputs":[{"name":"INPUT_ID","shape":[1,2],"data":[1,2]}]}'
    data = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    exchange = feed(Exchange(b"", events=False), data, size)
    assert exchange.complete and bytes(exchange.body) == body and not exchange.events


def test_an_error_is_read_from_a_bare_or_an_event_body():
    assert error_of(b'{"error":"request_output_len must be at least 1, got 0"}') == \
        "request_output_len must be at least 1, got 0"
    assert error_of(b'data: {"error":"in ensemble \'x\', bad"}\n\n') == "in ensemble 'x', bad"
    assert error_of(b"not json") == "not json"


def test_one_element_outputs_are_bare_values_and_token_ids_stop_at_the_sequence_length():
    assert values({"output_ids": 5}, "output_ids") == [5]
    assert values({}, "output_ids") == []
    assert token_ids({"output_ids": [1, 2, 3, 0], "sequence_length": 3}) == [1, 2, 3]
    assert token_ids({"output_ids": 9}) == [9]
