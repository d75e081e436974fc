"""The ensemble's own protobuf messages against tritonclient's generated ones: same bytes on the wire."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "model_repository" / "ensemble" / "1"))
import loopback  # noqa: E402
import wire  # noqa: E402


def test_our_request_reads_as_tritons_and_back():
    ours = loopback.infer_request("tensorrt_llm", [
        loopback.from_numpy("input_ids", np.array([[1, 2, 3]], dtype=np.int32)),
        loopback.from_numpy("streaming", np.array([[True]])),
        loopback.from_numpy("text_input", np.array([["héllo".encode()]], dtype=object)),
    ], ["output_ids", "sequence_length"])
    ours.parameters["triton_enable_empty_final_response"].bool_param = True
    theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.model_name == "tensorrt_llm"
    assert [(t.name, t.datatype, list(t.shape)) for t in theirs.inputs] == [
        ("input_ids", "INT32", [1, 3]), ("streaming", "BOOL", [1, 1]), ("text_input", "BYTES", [1, 1])]
    assert np.frombuffer(theirs.raw_input_contents[0], dtype=np.int32).tolist() == [1, 2, 3]
    assert deserialize_bytes_tensor(theirs.raw_input_contents[2]).tolist() == ["héllo".encode()]
    assert [o.name for o in theirs.outputs] == ["output_ids", "sequence_length"]
    assert theirs.parameters["triton_enable_empty_final_response"].bool_param is True
    assert wire.ModelInferRequest.FromString(theirs.SerializeToString()) == ours


def test_tritons_stream_response_reads_as_ours():
    theirs = service_pb2.ModelStreamInferResponse()
    response = theirs.infer_response
    response.model_name = "tensorrt_llm"
    response.parameters["triton_final_response"].bool_param = False
    for name, array in [("output_ids", np.array([[[42]]], dtype=np.int32)),
                        ("sequence_length", np.array([[1]], dtype=np.int32))]:
        response.outputs.add(name=name, datatype="INT32", shape=array.shape)
        response.raw_output_contents.append(array.tobytes())
    ours = wire.ModelStreamInferResponse.FromString(theirs.SerializeToString())
    outputs = loopback.Outputs(ours.infer_response)
    assert outputs.ints("output_ids").tolist() == [42] and outputs.ints("sequence_length").tolist() == [1]
    assert ours.infer_response.parameters["triton_final_response"].bool_param is False
    assert wire.ModelStreamInferResponse.FromString(
        service_pb2.ModelStreamInferResponse(error_message="boom").SerializeToString()).error_message == "boom"


@pytest.mark.parametrize("items", [[b""], [b"a", "日本語".encode(), b"\x00\xff"], ["🙂".encode()] * 3])
def test_bytes_tensors_match_tritonclient(items):
    array = np.array(items, dtype=object)
    assert loopback.serialize_bytes(array) == serialize_byte_tensor(array).item()
    assert loopback.deserialize_bytes(loopback.serialize_bytes(array)) == items
