"""gRPC server: Triton's GRPCInferenceService plus grpc.health.v1."""
