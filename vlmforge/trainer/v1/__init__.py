"""Python code generated from protos/vlmforge/trainer/v1/trainer.proto by `make protos` (part of `make setup`).

The generated `trainer_pb2*.py` files are build outputs, not committed; only the transport layers (the gRPC
servicer and the client CLI) import them, converting to domain types at the edge.
"""
