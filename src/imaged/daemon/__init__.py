"""The daemon's wiring: configuration, sockets, gRPC server, health, signals."""
