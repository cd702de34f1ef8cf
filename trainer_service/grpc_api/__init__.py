"""The gRPC transport of the trainer: protobuf <-> domain conversion, the error table, the servicer, the server."""
