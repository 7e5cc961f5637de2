"""Device memory for KV slots: allocation and strided copies through the CUDA runtime.

ONNX Runtime's Python API binds device buffers by address but has no call that copies part
of one, and KV slots need exactly that (a prefix cache hit written into a slot, a prompt's
entries given to its other completions, a rider row's first entry kept and put back). The
CUDA runtime does it with cudaMemcpy2D: `height` rows (a slot's kv heads) of `width` bytes
(its entries), each row `pitch` bytes after the last. It is loaded with ctypes from the
library onnxruntime-gpu already loaded, so the GPU image needs nothing more.

Copies are synchronous: a device-to-device copy is followed by a device synchronize, so that
the next forward pass (on ONNX Runtime's own stream) sees it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Protocol

_CUDA_MEMCPY_DEFAULT = 4  # direction inferred from the addresses (unified addressing)
_CUDART_NAMES = ("libcudart.so.12", "libcudart.so.13", "libcudart.so")


class DeviceMemory(Protocol):
    """What DeviceKvSlots needs of a device."""

    # The device type ONNX Runtime's IO binding names the buffers with.
    device_type: str

    def malloc_zeroed(self, nbytes: int) -> int: ...

    def free(self, address: int) -> None: ...

    def copy_2d(
        self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int
    ) -> None: ...


class CudaRuntimeError(RuntimeError):
    pass


class CudaMemory:
    device_type = "cuda"

    def __init__(self, device_id: int = 0):
        self._cudart = _load_cudart()
        self._check(self._cudart.cudaSetDevice(device_id), "cudaSetDevice")

    def malloc_zeroed(self, nbytes: int) -> int:
        address = ctypes.c_void_p()
        self._check(
            self._cudart.cudaMalloc(ctypes.byref(address), ctypes.c_size_t(nbytes)), "cudaMalloc"
        )
        self._check(self._cudart.cudaMemset(address, 0, ctypes.c_size_t(nbytes)), "cudaMemset")
        return address.value

    def free(self, address: int) -> None:
        self._check(self._cudart.cudaFree(ctypes.c_void_p(address)), "cudaFree")

    def copy_2d(
        self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, height: int
    ) -> None:
        size = ctypes.c_size_t
        self._check(
            self._cudart.cudaMemcpy2D(
                ctypes.c_void_p(dst),
                size(dst_pitch),
                ctypes.c_void_p(src),
                size(src_pitch),
                size(width),
                size(height),
                _CUDA_MEMCPY_DEFAULT,
            ),
            "cudaMemcpy2D",
        )
        # Host copies return when done; a device-to-device one only when synchronized.
        self._check(self._cudart.cudaDeviceSynchronize(), "cudaDeviceSynchronize")

    def _check(self, status: int, call: str) -> None:
        if status != 0:
            self._cudart.cudaGetErrorString.restype = ctypes.c_char_p
            reason = self._cudart.cudaGetErrorString(status).decode()
            raise CudaRuntimeError(f"{call} failed: {reason} ({status})")


def _load_cudart() -> ctypes.CDLL:
    found = ctypes.util.find_library("cudart")
    for name in (*_CUDART_NAMES, *([found] if found else [])):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise CudaRuntimeError("the CUDA runtime library (libcudart) is not loadable")
