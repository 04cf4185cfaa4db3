"""Registry side: image references, auth, mirrors, resolve and fetch (OCI distribution)."""
