"""numpy arrays on the wire: one msgpack extension type, never pickle.

An array travels as msgpack ext type :data:`NDARRAY_EXT` whose payload is

* 1 byte: the layout version (``1``);
* 1 byte: the length of the dtype string, then that string in ASCII - numpy's
  ``dtype.str``, which includes the byte order (``<f8``, ``>i4``, ``|b1``, ``<U5``,
  ``<M8[ns]``);
* 1 byte: the number of dimensions, then each dimension as an unsigned 64-bit
  little-endian integer;
* the elements in C order, exactly ``prod(shape) * itemsize`` bytes.

So dtype, shape, byte order and values arrive as they left; a non-contiguous array (a
slice, a transpose) is sent as its C-ordered copy. Arrays whose elements are Python
objects (``dtype=object``, or structured dtypes holding objects) could only travel as
pickle and are refused before anything is sent; structured dtypes are refused too (their
field layout is not part of ``dtype.str``).

A received array is a read-only view into the received message, as ``np.frombuffer``
gives (0.0.20 handed out the same): no copy is made, the message stays in memory while
the array lives, and the elements may not be aligned. ``array.copy()`` gives a
writable, aligned array of its own.

numpy is imported only by a service whose models declare an array (the type itself is
then already imported) or by a decoder that meets this extension type.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading
from typing import Any, Final

import msgspec

__all__ = ["NDARRAY_EXT", "decode_ext", "encode_hook", "keep_large_blocks", "unsendable_dtype"]

NDARRAY_EXT: Final = 1
_LAYOUT: Final = 1
_MAX_DIMS: Final = 64  # numpy's own limit (NPY_MAXDIMS in numpy 2)
# Kinds with a fixed-size, byte-for-byte representation: bool, ints, uints, floats,
# complex, datetime64, timedelta64, bytes, unicode, raw void.
_KINDS: Final = frozenset("biufcmMSUV")


# glibc's mallopt parameters (malloc.h) and the values a service with arrays uses.
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_MMAP_THRESHOLD_BYTES: Final = 32 * 1024 * 1024  # glibc's maximum on 64-bit
_TRIM_THRESHOLD_BYTES: Final = 64 * 1024 * 1024
_tuned = False


def keep_large_blocks() -> None:
    """Make glibc keep freed megabyte-sized blocks for reuse (once per process; called
    when a model declares an array).

    Each array message allocates frame-sized buffers (the received frame, the encoded
    reply, libzmq's copy). By default glibc serves blocks over 128 KiB with mmap and
    returns freed memory at the top of the heap to the kernel beyond a small threshold,
    so every message faults its pages in again: hundreds of page faults per megabyte
    message, more than the copies themselves cost. With blocks up to 32 MiB taken from
    the heap and up to 64 MiB of freed heap kept, they are reused instead. Left alone
    when the process sets glibc's malloc tunables itself (``MALLOC_*_`` or
    ``GLIBC_TUNABLES``), and off glibc.
    """
    global _tuned
    if _tuned:
        return
    _tuned = True
    if platform.libc_ver()[0] != "glibc":
        return
    if any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - glibc always has it
        return
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)


def unsendable_dtype(dtype: Any) -> str | None:
    """Why arrays of ``dtype`` cannot be sent, or ``None`` when they can."""
    if dtype.hasobject:
        return f"an array of dtype {dtype} holds Python objects, which only pickle could send"
    if dtype.names is not None or dtype.subdtype is not None:
        return f"an array of structured dtype {dtype} cannot be sent (send each field apart)"
    if dtype.kind not in _KINDS or dtype.itemsize == 0:
        return f"an array of dtype {dtype} cannot be sent"
    return None


# The payload is assembled in a buffer each thread keeps and reuses (msgspec copies it
# into the frame at once, and a thread encodes one message at a time): a fresh
# megabyte-sized allocation per message costs more than the copy itself, since glibc
# hands large blocks back to the kernel and takes page faults to get them again.
_REUSE_MAX_BYTES: Final = 8 * 1024 * 1024  # larger payloads get a buffer of their own
_scratch = threading.local()


def _payload(array: Any) -> memoryview | bytes:
    np = sys.modules["numpy"]
    why = unsendable_dtype(array.dtype)
    if why is not None:
        raise TypeError(why)
    if type(array) is not np.ndarray:
        array = np.asarray(array)  # a subclass (memmap, ...) travels as a plain array
    dtype = array.dtype.str.encode("ascii")
    header = bytearray((_LAYOUT, len(dtype)))
    header += dtype
    header.append(array.ndim)
    for dim in array.shape:
        header += dim.to_bytes(8, "little")
    nbytes = array.size * array.dtype.itemsize
    if len(header) + nbytes > _REUSE_MAX_BYTES:
        # A view of a C-contiguous array, a contiguous copy of any other.
        return bytes(header) + memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    # The elements go at an aligned offset of the buffer, the header just before them:
    # numpy copies (even from a slice or a transpose) at full speed into aligned memory.
    start = -(-len(header) // 64) * 64
    buffer: bytearray | None = getattr(_scratch, "buffer", None)
    if buffer is None or len(buffer) < start + nbytes:
        buffer = _scratch.buffer = bytearray(max(start + nbytes, 4096))
    buffer[start - len(header) : start] = header
    if nbytes:
        target = np.frombuffer(buffer, array.dtype, array.size, start)
        target.reshape(array.shape)[...] = array
    return memoryview(buffer)[start - len(header) : start + nbytes]


def encode_hook(obj: Any) -> Any:
    """msgspec ``enc_hook``: numpy arrays become the extension type; anything else is
    refused as msgspec would (msgspec calls this only for types it cannot encode, so it
    costs nothing for messages without arrays)."""
    np = sys.modules.get("numpy")  # not imported: obj cannot be an array
    if np is not None and isinstance(obj, np.ndarray):
        if type(obj) is not np.ndarray and isinstance(obj, np.ma.MaskedArray):
            raise TypeError("a masked array cannot be sent (its mask would be lost)")
        return msgspec.msgpack.Ext(NDARRAY_EXT, _payload(obj))
    raise TypeError(f"Encoding objects of type {type(obj).__qualname__} is unsupported")


class MalformedArray(ValueError):
    """An array extension from the network that does not describe a valid array."""


def decode_ext(code: int, data: memoryview) -> Any:
    """msgspec ``ext_hook``: the array extension becomes a numpy array; other extension
    types stay :class:`msgspec.msgpack.Ext` (as without a hook). Raises
    :class:`MalformedArray` (a ``ValueError``) for a payload that is not a valid array."""
    if code != NDARRAY_EXT:
        return msgspec.msgpack.Ext(code, bytes(data))
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - a model declaring arrays imported it
        raise MalformedArray("a numpy array arrived but numpy is not installed") from None
    size = len(data)
    if size < 3:
        raise MalformedArray(f"numpy array extension: {size} bytes cannot hold an array")
    if data[0] != _LAYOUT:
        raise MalformedArray(f"numpy array extension: unknown layout {data[0]}")
    end = 2 + data[1]
    if end + 1 > size:
        raise MalformedArray("numpy array extension: truncated header")
    try:
        dtype = np.dtype(bytes(data[2:end]).decode("ascii"))
    except (TypeError, ValueError, UnicodeDecodeError, SyntaxError):
        raise MalformedArray(f"numpy array extension: bad dtype {bytes(data[2:end])!r}") from None
    why = unsendable_dtype(dtype)
    if why is not None:
        raise MalformedArray(f"numpy array extension: {why}")
    ndim = data[end]
    start = end + 1 + 8 * ndim
    if ndim > _MAX_DIMS or start > size:
        raise MalformedArray(f"numpy array extension: bad number of dimensions {ndim}")
    shape = tuple(int.from_bytes(data[i : i + 8], "little") for i in range(end + 1, start, 8))
    count = 1
    for dim in shape:
        count *= dim
    if any(dim >= 1 << 62 for dim in shape) or count * dtype.itemsize != size - start:
        raise MalformedArray(
            f"numpy array extension: shape {shape} of {dtype.str} needs "
            f"{count * dtype.itemsize} bytes, got {size - start}"
        )
    if not count:
        array = np.empty(shape, dtype)
    else:
        # A view into the message, as np.frombuffer gives: no copy, read-only.
        array = np.frombuffer(data, dtype, count, start).reshape(shape)
    array.flags.writeable = False
    return array
