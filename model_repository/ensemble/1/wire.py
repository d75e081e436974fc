"""The part of Triton's gRPC protocol the ensemble speaks, as protobuf messages of its own.

Field names and numbers are those of `inference.*` in triton-inference-server/common
protobuf/grpc_service.proto (unchanged from 2.51 through 26.07); tensors travel only as raw bytes,
so InferTensorContents is left out (protobuf skips fields a reader does not know). Defining the
messages here means the ensemble needs only grpcio and protobuf in the serving image, not
tritonclient. tests/test_loopback_wire.py checks them against tritonclient's generated classes.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

FieldType = descriptor_pb2.FieldDescriptorProto
STRING, BYTES, BOOL, INT64, UINT64, DOUBLE, MESSAGE = (
    FieldType.TYPE_STRING, FieldType.TYPE_BYTES, FieldType.TYPE_BOOL, FieldType.TYPE_INT64, FieldType.TYPE_UINT64,
    FieldType.TYPE_DOUBLE, FieldType.TYPE_MESSAGE)
OPTIONAL, REPEATED = FieldType.LABEL_OPTIONAL, FieldType.LABEL_REPEATED
SERVICE = "inference.GRPCInferenceService"


def _message(container, name: str, fields: list[tuple], parameters: int | None = None):
    message = container.add(name=name)
    for field_name, number, kind, *rest in fields:
        label = rest[0] if rest else OPTIONAL
        type_name = rest[1] if len(rest) > 1 else None
        message.field.add(name=field_name, number=number, type=kind, label=label, type_name=type_name)
    if parameters is not None:  # map<string, InferParameter> is a nested entry message
        entry = message.nested_type.add(name="ParametersEntry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=STRING, label=OPTIONAL)
        entry.field.add(name="value", number=2, type=MESSAGE, label=OPTIONAL, type_name=".inference.InferParameter")
        message.field.add(name="parameters", number=parameters, type=MESSAGE, label=REPEATED,
                          type_name=f".inference.{name}.ParametersEntry")
    return message


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="gke_triton_llm/grpc_service_subset.proto", package="inference",
                                               syntax="proto3")
    parameter = proto.message_type.add(name="InferParameter")
    parameter.oneof_decl.add(name="parameter_choice")
    for name, number, kind in [("bool_param", 1, BOOL), ("int64_param", 2, INT64), ("string_param", 3, STRING),
                               ("double_param", 4, DOUBLE), ("uint64_param", 5, UINT64)]:
        parameter.field.add(name=name, number=number, type=kind, label=OPTIONAL, oneof_index=0)

    request = _message(proto.message_type, "ModelInferRequest", [
        ("model_name", 1, STRING), ("model_version", 2, STRING), ("id", 3, STRING),
        ("inputs", 5, MESSAGE, REPEATED, ".inference.ModelInferRequest.InferInputTensor"),
        ("outputs", 6, MESSAGE, REPEATED, ".inference.ModelInferRequest.InferRequestedOutputTensor"),
        ("raw_input_contents", 7, BYTES, REPEATED)], parameters=4)
    _message(request.nested_type, "InferInputTensor",
             [("name", 1, STRING), ("datatype", 2, STRING), ("shape", 3, INT64, REPEATED)])
    _message(request.nested_type, "InferRequestedOutputTensor", [("name", 1, STRING)])

    response = _message(proto.message_type, "ModelInferResponse", [
        ("model_name", 1, STRING), ("model_version", 2, STRING), ("id", 3, STRING),
        ("outputs", 5, MESSAGE, REPEATED, ".inference.ModelInferResponse.InferOutputTensor"),
        ("raw_output_contents", 6, BYTES, REPEATED)], parameters=4)
    _message(response.nested_type, "InferOutputTensor",
             [("name", 1, STRING), ("datatype", 2, STRING), ("shape", 3, INT64, REPEATED)])

    _message(proto.message_type, "ModelStreamInferResponse", [
        ("error_message", 1, STRING), ("infer_response", 2, MESSAGE, OPTIONAL, ".inference.ModelInferResponse")])
    return proto


# A pool of our own, so a process that also imports tritonclient (tests) has no clash of names.
_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())
ModelInferRequest = message_factory.GetMessageClass(_pool.FindMessageTypeByName("inference.ModelInferRequest"))
ModelInferResponse = message_factory.GetMessageClass(_pool.FindMessageTypeByName("inference.ModelInferResponse"))
ModelStreamInferResponse = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName("inference.ModelStreamInferResponse"))
