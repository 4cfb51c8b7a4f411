"""The few CUDA runtime calls the TensorRT engine needs, through ctypes on ``libcudart``.

TensorRT's Python API leaves device memory to the caller. On the vehicle there is no torch, and a
CUDA binding package (pycuda, cuda-python) would be one more thing to pin per JetPack; the CUDA
runtime library itself is always there (JetPack, the CUDA toolkit, or the ``nvidia-cuda-runtime``
wheel TensorRT pulls in). So: device count and properties, malloc/free, async copies, a stream.
Every call is checked and raises :class:`CudaError` naming the call and CUDA's message.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os

MEMCPY_HOST_TO_DEVICE = 1
MEMCPY_DEVICE_TO_HOST = 2
ATTR_COMPUTE_CAPABILITY_MAJOR = 75
ATTR_COMPUTE_CAPABILITY_MINOR = 76
_PROPS_BYTES = 4096  # cudaDeviceProp is ~1 KB; its first field is char name[256]


class CudaError(RuntimeError):
    """A CUDA runtime call failed (or the library is missing); the message says which."""


def _candidates() -> list:
    names = ['libcudart.so', 'libcudart.so.12', 'libcudart.so.13', 'libcudart.so.11.0']
    found = ctypes.util.find_library('cudart')
    if found:
        names.insert(0, found)
    for root in os.environ.get('LD_LIBRARY_PATH', '').split(':') + ['/usr/local/cuda/lib64']:
        if root:
            names += sorted(glob.glob(os.path.join(root, 'libcudart.so*')))
    try:  # the nvidia-cuda-runtime wheel (pulled in by the tensorrt wheels)
        import nvidia.cuda_runtime as wheel

        names += sorted(glob.glob(os.path.join(list(wheel.__path__)[0], 'lib', 'libcudart.so*')))
    except ImportError:
        pass
    return names


_LIB = None


def library():
    """The loaded CUDA runtime (cached), or :class:`CudaError` saying what was tried."""
    global _LIB
    if _LIB is None:
        tried = []
        for name in _candidates():
            try:
                _LIB = ctypes.CDLL(name)
                break
            except OSError as e:
                tried.append(f'{name} ({e})')
        else:
            raise CudaError('the CUDA runtime library (libcudart) is not loadable: '
                            + '; '.join(tried[:4]))
        _LIB.cudaGetErrorString.restype = ctypes.c_char_p
    return _LIB


def check(code: int, call: str) -> None:
    if code != 0:
        message = library().cudaGetErrorString(code).decode(errors='replace')
        raise CudaError(f'{call} failed: error {code} ({message})')


def device_count() -> int:
    count = ctypes.c_int(0)
    check(library().cudaGetDeviceCount(ctypes.byref(count)), 'cudaGetDeviceCount')
    return count.value


def device_name(index: int = 0) -> str:
    props = ctypes.create_string_buffer(_PROPS_BYTES)
    check(library().cudaGetDeviceProperties(props, int(index)), 'cudaGetDeviceProperties')
    return props.raw[:256].split(b'\0', 1)[0].decode(errors='replace')


def compute_capability(index: int = 0) -> tuple[int, int]:
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib = library()
    check(lib.cudaDeviceGetAttribute(ctypes.byref(major), ATTR_COMPUTE_CAPABILITY_MAJOR,
                                     int(index)), 'cudaDeviceGetAttribute')
    check(lib.cudaDeviceGetAttribute(ctypes.byref(minor), ATTR_COMPUTE_CAPABILITY_MINOR,
                                     int(index)), 'cudaDeviceGetAttribute')
    return major.value, minor.value


def set_device(index: int) -> None:
    check(library().cudaSetDevice(int(index)), 'cudaSetDevice')


def malloc(nbytes: int) -> int:
    ptr = ctypes.c_void_p()
    check(library().cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(int(nbytes), 1))),
          'cudaMalloc')
    return int(ptr.value)


def free(ptr: int) -> None:
    check(library().cudaFree(ctypes.c_void_p(ptr)), 'cudaFree')


def stream_create() -> int:
    stream = ctypes.c_void_p()
    check(library().cudaStreamCreate(ctypes.byref(stream)), 'cudaStreamCreate')
    return int(stream.value or 0)


def stream_destroy(stream: int) -> None:
    check(library().cudaStreamDestroy(ctypes.c_void_p(stream)), 'cudaStreamDestroy')


def memcpy_async(dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
    check(library().cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src),
                                    ctypes.c_size_t(int(nbytes)), int(kind),
                                    ctypes.c_void_p(stream)), 'cudaMemcpyAsync')


def stream_synchronize(stream: int) -> None:
    check(library().cudaStreamSynchronize(ctypes.c_void_p(stream)), 'cudaStreamSynchronize')
