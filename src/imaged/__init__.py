"""imaged: machine.ImageService for containerd, with image signature verification."""

__version__ = "0.1.0"
