"""ImageService.Import: OCI-layout and docker-save archives (plain, gzip or zstd) into containerd."""

from imaged.archive.importer import import_archive
from imaged.archive.limits import ImportLimits

__all__ = ["ImportLimits", "import_archive"]
