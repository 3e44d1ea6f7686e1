"""numpy arrays on the wire: msgpack extension types, never pickle.

An array travels as a msgpack array of two extension values:

* ext type :data:`ARRAY_HEADER` (1): what the elements are -

  * 1 byte: the layout version (``1``);
  * 1 byte: the length of the dtype string, then that string in ASCII - numpy's
    ``dtype.str``, which includes the byte order (``<f8``, ``>i4``, ``|b1``, ``<U5``,
    ``<M8[ns]``);
  * 1 byte: the number of dimensions, then each dimension as an unsigned 64-bit
    little-endian integer;

* ext type :data:`ARRAY_DATA` (2): the elements in C order, exactly
  ``prod(shape) * itemsize`` bytes.

Two values rather than one so that the elements go from the array's own memory straight
into the message: msgspec takes an extension's payload as one buffer, and putting a
header in front of the elements would cost a copy of every array sent.

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
then already imported). This module knows the layout; the msgpack codec
(``msgpack_codec.py``) wraps the parts in extension values and hooks
:func:`array_parts`, :func:`read_part` and :func:`rebuild` into the encoders and decoders
of models that declare an array.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Final

__all__ = [
    "ARRAY_DATA",
    "ARRAY_HEADER",
    "array_parts",
    "keep_large_blocks",
    "read_part",
    "rebuild",
    "unsendable_dtype",
]

ARRAY_HEADER: Final = 1
ARRAY_DATA: Final = 2
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
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):  # not glibc
        return
    if not libc.startswith("glibc"):
        return
    if any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
        return
    import ctypes

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


def _header(array: Any) -> bytes:
    dtype = array.dtype.str.encode("ascii")
    header = bytearray((_LAYOUT, len(dtype)))
    header += dtype
    header.append(array.ndim)
    for dim in array.shape:
        header += dim.to_bytes(8, "little")
    return bytes(header)


def array_parts(obj: Any) -> tuple[bytes, memoryview]:
    """A numpy array's two extension payloads: its :data:`ARRAY_HEADER` and its
    :data:`ARRAY_DATA`. Anything else is refused with the ``TypeError`` msgspec raises
    for a type it cannot encode (the codec calls this only for such types, so it costs
    nothing for messages without arrays)."""
    np = sys.modules.get("numpy")  # not imported: obj cannot be an array
    if np is None or not isinstance(obj, np.ndarray):
        raise TypeError(f"Encoding objects of type {type(obj).__qualname__} is unsupported")
    if type(obj) is not np.ndarray:
        if isinstance(obj, np.ma.MaskedArray):
            raise TypeError("a masked array cannot be sent (its mask would be lost)")
        obj = np.asarray(obj)  # a subclass (memmap, ...) travels as a plain array
    why = unsendable_dtype(obj.dtype)
    if why is not None:
        raise TypeError(why)
    # A view of a C-contiguous array's memory (msgspec copies it into the message once);
    # a contiguous copy of any other.
    elements = memoryview(np.ascontiguousarray(obj).reshape(-1).view(np.uint8))
    return _header(obj), elements


class _Header:
    """A decoded array header (or why it is not one), until its elements arrive."""

    __slots__ = ("count", "dtype", "problem", "shape")

    def __init__(self, dtype: Any, shape: tuple[int, ...], count: int, problem: str) -> None:
        self.dtype, self.shape, self.count, self.problem = dtype, shape, count, problem


class _Elements:
    """The elements of an array: a view into the received message."""

    __slots__ = ("data",)

    def __init__(self, data: memoryview) -> None:
        self.data = data


def read_part(code: int, data: memoryview) -> Any:
    """A received extension value of one of the two array codes as its part (put
    together by :func:`rebuild`); ``None`` for any other code. Never raises: a malformed
    header is reported by :func:`rebuild`, which the decoder calls where the array sits
    in the message."""
    if code == ARRAY_DATA:
        return _Elements(data)
    if code == ARRAY_HEADER:
        return _read_header(data)
    return None


def _read_header(data: memoryview) -> _Header:
    def bad(problem: str) -> _Header:
        return _Header(None, (), 0, f"malformed numpy array: {problem}")

    import numpy as np

    size = len(data)
    if size < 3:
        return bad(f"a header of {size} bytes")
    if data[0] != _LAYOUT:
        return bad(f"unknown layout {data[0]}")
    end = 2 + data[1]
    if end + 1 > size:
        return bad("truncated header")
    text = bytes(data[2:end])
    try:
        dtype = np.dtype(text.decode("ascii"))
    except (TypeError, ValueError, UnicodeDecodeError, SyntaxError):
        return bad(f"bad dtype {text!r}")
    why = unsendable_dtype(dtype)
    if why is not None:
        return bad(why)
    ndim = data[end]
    start = end + 1 + 8 * ndim
    if ndim > _MAX_DIMS or start != size:
        return bad(f"a header of {size} bytes for {ndim} dimensions")
    shape = tuple(int.from_bytes(data[i : i + 8], "little") for i in range(end + 1, start, 8))
    if any(dim >= 1 << 62 for dim in shape):
        return bad(f"shape {shape}")
    count = 1
    for dim in shape:
        count *= dim
    return _Header(dtype, shape, count, "")


def rebuild(obj: Any) -> Any:
    """An array's header and elements (as :func:`read_part` gave them) become a
    read-only array (see the module docstring). A ``ValueError`` here is reported by the
    decoder as a validation error at the array's path; anything but the two parts is
    returned as it is, for the decoder to refuse ("expected ndarray")."""
    if type(obj) is not list or len(obj) != 2:
        if type(obj) in (_Header, _Elements):
            raise ValueError("malformed numpy array: a header and its elements come as a pair")
        return obj
    header, elements = obj
    if type(header) is not _Header or type(elements) is not _Elements:
        if any(type(part) in (_Header, _Elements) for part in obj):
            raise ValueError("malformed numpy array: a header, then its elements")
        return obj
    if header.problem:
        raise ValueError(header.problem)
    import numpy as np

    dtype, count, data = header.dtype, header.count, elements.data
    if count * dtype.itemsize != len(data):
        raise ValueError(
            f"malformed numpy array: shape {header.shape} of {dtype.str} needs "
            f"{count * dtype.itemsize} bytes, got {len(data)}"
        )
    if count:
        array = np.frombuffer(data, dtype, count).reshape(header.shape)
    else:
        array = np.empty(header.shape, dtype)
    array.flags.writeable = False
    return array
