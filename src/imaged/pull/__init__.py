"""Pull: registry -> containerd content -> snapshots -> records, with live per-layer progress."""
