"""An async containerd client over the generated gRPC stubs.

Layers, as in containerd's Go client: `client` (connection, namespaces, errors), `leases`,
`content` (read, write with ref locks), `images` (records), `unpack` (snapshots + diff).
"""

from imaged.containerd.client import Containerd, Namespaced

__all__ = ["Containerd", "Namespaced"]
