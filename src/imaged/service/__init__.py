"""The gRPC layer: decode requests, call the domain, map errors to status codes. Nothing else."""
