"""The root configuration model. Sections of registries and verification live with their code."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from imaged.registry.config import RegistriesConfig
from imaged.section import Section
from imaged.verify.config import VerificationConfig


class SocketConfig(Section):
    """A unix socket the daemon listens on."""

    path: str = "/run/imaged/imaged.sock"
    # Octal permission bits as a string ("0660") or an int (0o660).
    mode: int = 0o660
    # A group name, or a gid (`1000` or `"1000"`).
    group: str | None = None
    # Which registry credentials Verify may use for callers of this socket: `configured` (the
    # `registries` auth, client certificates and hosts.toml headers, plus any sent with the
    # request) or `request` (only those sent with the request). Unset: `configured` for the admin
    # socket, `request` for the read-only one, whose callers must not borrow the node's access.
    credentials: Literal["configured", "request"] | None = None

    @field_validator("group", mode="before")
    @classmethod
    def _gid(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else v

    @field_validator("mode", mode="before")
    @classmethod
    def _octal(cls, v: object) -> object:
        if isinstance(v, bool):
            raise ValueError("mode must be octal like '0660'")
        if isinstance(v, str):
            try:
                return int(v, 8)
            except ValueError:
                raise ValueError(f"mode must be octal like '0660', got {v!r}") from None
        return v

    @field_validator("mode")
    @classmethod
    def _range(cls, v: int) -> int:
        if not 0 <= v <= 0o777:
            raise ValueError("mode must be between 0000 and 0777")
        return v


class ListenConfig(Section):
    admin: SocketConfig = SocketConfig()
    # Serves only List and Verify (containerd's CRI plugin, readers).
    readonly: SocketConfig | None = None
    # Serves CRI's runtime.v1.ImageService (the kubelet's imageServiceEndpoint), on k8s.io.
    cri: SocketConfig | None = None

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        paths = [("admin", self.admin.path)]
        paths += [(name, s.path) for name, s in (("readonly", self.readonly), ("cri", self.cri)) if s]
        for i, (name, path) in enumerate(paths):
            for other, other_path in paths[:i]:
                if path == other_path:
                    raise ValueError(f"{name}.path must differ from {other}.path (one socket, one role)")
        if self.cri is not None and self.cri.credentials is not None:
            # Accepted and ignored before: a setting that does nothing reads as a protection.
            raise ValueError(
                "cri.credentials is not a setting of the CRI socket: a CRI pull uses the request's auth, "
                "else the configured registries credentials, as containerd's CRI does; remove it"
            )
        return self


class ContainerdConfig(Section):
    """Where each `ContainerdInstance.driver` points."""

    system_socket: str = "/run/containerd/containerd.sock"
    cri_socket: str = "/run/containerd/containerd.sock"
    snapshotter: str = "overlayfs"
    # Leases made by a call are also bounded by this, should the daemon die mid-call.
    lease_expire_seconds: int = Field(default=86400, ge=60)


class PullConfig(Section):
    max_concurrent_downloads: int = Field(default=4, ge=1, le=64)
    # Progress updates per layer per second, at most.
    progress_rate: float = Field(default=10.0, gt=0, le=100)
    # Who moves the bytes of a pull into k8s.io: containerd's CRI plugin (pinned to the verified
    # digest, under imaged's lease) where it can be told everything imaged would do, else imaged.
    cri_transfer: Literal["containerd", "imaged"] = "containerd"


class LogConfig(Section):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class MetricsConfig(Section):
    # host:port for Prometheus text; unset disables the endpoint.
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _hostport(cls, v: str | None) -> str | None:
        if v is None:
            return v
        _host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"listen must be host:port, got {v!r}")
        return v


class ShutdownConfig(Section):
    # Running pulls and imports get this long to finish after SIGTERM; then they are cancelled cleanly.
    grace_seconds: float = Field(default=30.0, ge=0, le=3600)


class StateConfig(Section):
    """Where the daemon keeps what must survive a restart (the last good trust root, TUF metadata)."""

    dir: str = "/var/lib/imaged"


class Config(Section):
    listen: ListenConfig = ListenConfig()
    containerd: ContainerdConfig = ContainerdConfig()
    pull: PullConfig = PullConfig()
    registries: RegistriesConfig = RegistriesConfig()
    verification: VerificationConfig = VerificationConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    state: StateConfig = StateConfig()
