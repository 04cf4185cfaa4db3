"""Registry side: image references, auth, mirrors, resolve and fetch (OCI distribution)."""

# imaged.config's package imports every section model, ours included; loading it first keeps
# `import imaged.registry.config` (before anything else) from meeting a half-initialized module.
import imaged.config  # noqa: F401
