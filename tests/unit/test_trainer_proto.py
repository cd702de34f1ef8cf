"""The generated gRPC code matches the contract clients rely on (DESIGN.md: versioned package, enum zero values
`*_UNSPECIFIED`, the six FineTuningService methods, Watch as a server stream)."""

from __future__ import annotations

from vlmforge.trainer.v1 import trainer_pb2, trainer_pb2_grpc


def test_service_methods_and_streaming() -> None:
    service = trainer_pb2.DESCRIPTOR.services_by_name["FineTuningService"]
    assert trainer_pb2.DESCRIPTOR.package == "vlmforge.trainer.v1"
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"CreateFineTuningJob", "GetFineTuningJob", "ListFineTuningJobs", "CancelFineTuningJob",
                            "WatchFineTuningJob", "ListFineTuningCheckpoints"}
    assert methods["WatchFineTuningJob"].server_streaming
    assert not any(m.server_streaming for name, m in methods.items() if name != "WatchFineTuningJob")
    assert hasattr(trainer_pb2_grpc, "FineTuningServiceServicer")


def test_every_enum_starts_with_unspecified() -> None:
    for enum in trainer_pb2.DESCRIPTOR.enum_types_by_name.values():
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED"), enum.name
        assert all(v.name.startswith(zero.removesuffix("UNSPECIFIED")) for v in enum.values), enum.name
