"""One log line and metrics per RPC, from a server interceptor, so handlers stay thin.

A log line carries the method, the image reference (never credentials), the status code and
the duration; the Verify request's credentials are never read here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

log = logging.getLogger("imaged.rpc")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("imaged_requests", "RPCs handled", ["method", "code"], registry=r)
        self.latency = Histogram(
            "imaged_request_seconds",
            "RPC duration",
            ["method"],
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300),
            registry=r,
        )
        self.pulled_bytes = Counter("imaged_pulled_bytes", "Bytes of blobs downloaded by pulls", registry=r)
        self.imported_bytes = Counter("imaged_imported_bytes", "Bytes of archives imported", registry=r)
        self.verdicts = Counter("imaged_verifications", "Verification outcomes", ["outcome"], registry=r)
        # Bound once: these are counted on every Verify.
        self.verified = self.verdicts.labels("verified")
        self.unverified = self.verdicts.labels("unverified")
        self.refused = self.verdicts.labels("refused")
        self.cache_hits = Counter("imaged_verification_cache_hits", "Verdicts served from cache", registry=r)


def _ref_of(request: Any) -> str:
    ref = getattr(request, "image_ref", None)
    if not ref:  # CRI requests name the image in an ImageSpec
        ref = getattr(getattr(request, "image", None), "image", None)
    return str(ref) if ref else ""


def _code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    if error is None:
        return grpc.StatusCode.OK
    return (
        grpc.StatusCode.CANCELLED
        if isinstance(error, BaseException) and "Cancel" in type(error).__name__
        else grpc.StatusCode.UNKNOWN
    )


# Read-only calls that succeed are logged at DEBUG: CRI asks Verify before every pull, mostly
# answered from the cache (a verdict actually computed is logged by the verifier at INFO), and
# a line per call would be most of the log and a tenth of the daemon's CPU at 2,000 calls a second.
# The kubelet polls ImageStatus, ListImages and ImageFsInfo on the CRI socket likewise.
_QUIET_WHEN_OK = frozenset({"Verify", "List", "ImageStatus", "ListImages", "ImageFsInfo"})


class ObservingInterceptor(grpc.aio.ServerInterceptor):
    """Wrapped handlers are built once per method and metric children bound once: this runs
    on every call, and a cached Verify costs a fraction of a millisecond."""

    def __init__(self, metrics: Metrics, socket_role: str) -> None:
        self.metrics = metrics
        self.role = socket_role
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._counters: dict[tuple[str, grpc.StatusCode], Any] = {}
        self._histograms: dict[str, Any] = {}

    def _done(self, method: str, ref: str, start: float, context: Any, error: BaseException | None) -> None:
        elapsed = time.monotonic() - start
        code = _code(context, error)
        name = method.rsplit("/", 1)[-1]
        counter = self._counters.get((name, code))
        if counter is None:
            counter = self._counters[(name, code)] = self.metrics.requests.labels(name, code.name)
        counter.inc()
        histogram = self._histograms.get(name)
        if histogram is None:
            histogram = self._histograms[name] = self.metrics.latency.labels(name)
        histogram.observe(elapsed)
        if code not in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND):
            level = logging.WARNING
        elif code == grpc.StatusCode.OK and name in _QUIET_WHEN_OK:
            level = logging.DEBUG
        else:
            level = logging.INFO
        if not log.isEnabledFor(level):
            return
        details = context.details() if code != grpc.StatusCode.OK else ""
        fields = {
            "method": name,
            "ref": ref,
            "code": code.name,
            "ms": round(elapsed * 1000, 2),
            "socket": self.role,
        }
        msg = f"{name} ref={ref or '-'} code={code.name} {fields['ms']}ms"
        if details:
            msg += f": {details}"
            fields["error"] = details
        log.log(level, msg, extra={"fields": fields})

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method  # type: ignore[attr-defined]
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None or not method.startswith(("/machine.", "/runtime.v1.")):
            return handler
        wrapped = self._wrap(method, handler)
        self._handlers[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        done = self._done
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }

        def returning(inner: Callable[[Any, Any], Awaitable[Any]], streamed_request: bool) -> Any:
            """Unary-unary and stream-unary: one awaited result (a stream has no ref to log)."""

            async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
                start, err = time.monotonic(), None
                try:
                    return await inner(request, context)
                except BaseException as e:
                    err = e
                    raise
                finally:
                    done(method, "" if streamed_request else _ref_of(request), start, context, err)

            return observed

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(returning(handler.unary_unary, False), **codec)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(returning(handler.stream_unary, True), **codec)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def us(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                start, err = time.monotonic(), None
                try:
                    async for item in inner_us(request, context):
                        yield item
                except BaseException as e:
                    err = e
                    raise
                finally:
                    done(method, _ref_of(request), start, context, err)

            return grpc.unary_stream_rpc_method_handler(us, **codec)
        return handler
