"""imagectl: the command-line client of imaged (machine.ImageService over a unix socket).

Modules import grpc, the generated stubs and rich only when a command needs them, so that
`imagectl --help`, `completion` and argument errors stay instant and `list` pays only for grpc.
"""
