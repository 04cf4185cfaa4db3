"""Turning exceptions into gRPC statuses at the edge, once."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from imaged import errors

log = logging.getLogger("imaged.rpc")
R = TypeVar("R")


# Status details travel percent-encoded in a header the client bounds (8 KiB by default): a
# longer one arrives as RESOURCE_EXHAUSTED instead of its own code. Non-ASCII takes 9 bytes a char.
MAX_DETAILS_BYTES = 4096


def _fit(message: str) -> str:
    """`message`, cut (at a character) so that its percent-encoding stays under the bound."""
    encoded = 0
    for i, ch in enumerate(message):
        encoded += 1 if " " <= ch <= "~" and ch != "%" else 3 * len(ch.encode("utf-8", "replace"))
        if encoded > MAX_DETAILS_BYTES - 3:
            return message[:i] + "..."
    return message


async def _abort(context: grpc.aio.ServicerContext, method: str, e: BaseException) -> None:
    if isinstance(e, errors.ImagedError):
        await context.abort(e.code, _fit(e.message))
    log.exception("%s: unexpected error", method)
    # The exception's text stays in the log: it is unbounded and unfiltered.
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(e).__name__} (see imaged's log)"
    )


def unary(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await fn(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:
            await _abort(context, fn.__name__, e)
            raise AssertionError("unreachable") from e

    return wrapper


def streaming(fn: Callable[..., AsyncIterator[R]]) -> Callable[..., AsyncIterator[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[R]:
        try:
            async for item in fn(self, request, context):
                yield item
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:
            await _abort(context, fn.__name__, e)

    return wrapper
