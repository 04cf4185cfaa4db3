"""One log line and metrics per RPC, from a server interceptor, so handlers stay thin.

A log line carries the method, the image reference (never credentials), the status code and
the duration; the Verify request's credentials are never read here. What a client sent (the
reference, and error details that quote it) is escaped and cut before it is logged: anyone who
may connect, the read-only socket included, must not be able to write a line of their own into
the log, nor fill the disk with it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from imaged.service.metrics import Metrics

log = logging.getLogger("imaged.rpc")

MAX_LOGGED_REF = 256
MAX_LOGGED_DETAILS = 1024


def shown(text: str, limit: int) -> str:
    """`text` for a log line: non-printable characters escaped (`\\n`, `\\x1b`), at most
    `limit` characters of it, and how many more there were."""
    cut = text[:limit]
    if not cut.isprintable():
        cut = "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)
    return cut if len(text) <= limit else f"{cut}...({len(text) - limit} more characters)"


class TextFormatter(logging.Formatter):
    """Text log lines, one record per line whatever its text: the message is escaped, and a
    traceback's lines are indented, so no line of the log starts with text a message carried."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not record.message.isprintable():
            record.message = shown(record.message, len(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    return "\n".join("    " + shown(line, len(line)) for line in text.split("\n"))


def _ref_of(request: Any) -> str:
    ref = getattr(request, "image_ref", None)
    if not ref:  # CRI requests name the image in an ImageSpec
        ref = getattr(getattr(request, "image", None), "image", None)
    return shown(str(ref), MAX_LOGGED_REF) if ref else ""


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
        if details:
            details = shown(str(details), MAX_LOGGED_DETAILS)
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
