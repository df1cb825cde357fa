"""The optional native gRPC frontend (C++ grpc++ bridge); see grpc_bridge.cc and build.py."""
