"""Which names an archive gives its images.

OCI layout (index.json entries):
- `io.containerd.image.name` is a full reference (what containerd and Docker 25+ write);
- else `org.opencontainers.image.ref.name` if it is a full reference, i.e. contains `/`, `:` or `@`
  (`test/app:v1`, as skopeo writes); a bare tag such as `v1` or `latest` names no image, as in
  containerd's importer, and such an entry is not imported.
docker-save (manifest.json): every `RepoTags` entry; an entry without tags is not imported.
All names are normalized (`alpine:latest` -> `docker.io/library/alpine:latest`). A malformed name
is the client's error (InvalidArgument), never silently dropped.
"""

from __future__ import annotations

from typing import Any

from imaged.errors import InvalidArgument
from imaged.registry.reference import Reference, parse

IMAGE_NAME = "io.containerd.image.name"
REF_NAME = "org.opencontainers.image.ref.name"


def _parse(name: str, what: str) -> Reference:
    try:
        return parse(name)
    except InvalidArgument as e:
        raise InvalidArgument(f"{what}: {e.message}") from e


def oci_names(annotations: dict[str, str], what: str) -> list[Reference]:
    name = annotations.get(IMAGE_NAME, "")
    if name:
        return [_parse(name, f"{what} ({IMAGE_NAME})")]
    ref = annotations.get(REF_NAME, "")
    if ref and any(c in ref for c in "/:@"):
        return [_parse(ref, f"{what} ({REF_NAME})")]
    return []


def docker_names(repo_tags: Any, what: str) -> list[Reference]:
    if repo_tags is None:
        return []
    if not isinstance(repo_tags, list) or not all(isinstance(t, str) for t in repo_tags):
        raise InvalidArgument(f"{what}: RepoTags must be a list of strings")
    return [_parse(t, f"{what} RepoTags") for t in repo_tags if t and t != "<none>:<none>"]


def record_name(ref: Reference, target_digest: str) -> str:
    """The name reported for an imported image: the tag, or the repo digest for a digest-only name."""
    tagged = ref.tagged()
    return tagged if tagged else ref.pinned(target_digest)
