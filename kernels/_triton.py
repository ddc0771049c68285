"""Triton where it is installed (Linux, `make install` or a CUDA build of torch).

The torch references beside each kernel must work without it (CPU-only installs), so kernel modules
take `triton` / `tl` from here: without triton, `@triton.jit` leaves the function undecorated and
`require()` turns a kernel launch into a clear error. Kernel modules use
`from __future__ import annotations`, so `tl.constexpr` annotations are never evaluated here.
On CPU tensors a kernel runs only under Triton's interpreter (`TRITON_INTERPRET=1`, read when the
kernel is decorated, i.e. when its module is first imported).
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    AVAILABLE = True
except ImportError:
    AVAILABLE = False

    class _NoTriton:
        @staticmethod
        def jit(fn):
            return fn

    triton, tl = _NoTriton(), None


def require() -> None:
    if not AVAILABLE:
        raise RuntimeError("this kernel needs triton (Linux: pip install 'triton>=3.6'); "
                           "the *_ref function beside it computes the same on any device")


def interpreting() -> bool:
    """True when kernels run in Triton's interpreter (CPU tensors), as TRITON_INTERPRET=1 asks."""
    return AVAILABLE and bool(triton.knobs.runtime.interpret)
