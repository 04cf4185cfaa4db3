"""Pure OCI/Docker image data: media types, manifests, platforms, chain IDs. No I/O."""
