"""Native CPU code: C++ sources beside the operation they serve, compiled on first use and called through XLA's FFI.

XLA's CPU backend has no way to stream packed low-bit weights through a multiply-accumulate at memory speed (the
packed matmul's XLA face decodes whole tiles to float32 first), nor decode codes through per-block tables at
memory speed (``lpnum.dequantize``), so an operation may carry a C++ face. It is compiled here, on the machine that
runs it, by the system's C++ compiler (``$CXX``, else ``c++``) with ``-O3 -march=native`` against the FFI headers
of the installed jaxlib, so it matches that jaxlib and that CPU; the headers beside this module (``*.h``, shared by
the sources) are on the include path. The shared library is cached under ``$LPNUM_NATIVE_CACHE`` (default
``~/.cache/lpnum/native``), named by a hash of the source, those headers, the flags, the compiler, the instruction set ``-march=native`` means on this CPU (the compiler's predefined
macros for it) and the jaxlib version, so a cache shared between machines never hands one CPU a library built for
another; concurrent processes build into temporary files and rename, so they never see a half-written library.

Set ``LPNUM_NATIVE=0`` to never build or use native kernels. Where no compiler works, :func:`load` returns None
after one warning and callers fall back to their XLA face.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings

import jax

__all__ = ["enabled", "load", "FLAGS"]

#: The compiler flags. No fast-math: NaN, infinities, signed zeros and subnormals must behave as IEEE says.
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-pthread")

_lock = threading.Lock()
#: The directory of the headers the sources share (this package's).
_HEADERS = pathlib.Path(__file__).parent


def enabled() -> bool:
  """False when the environment variable ``LPNUM_NATIVE`` is ``0`` (native kernels off)."""
  return os.environ.get("LPNUM_NATIVE", "1") != "0"


def load(source: str | os.PathLike, targets: dict[str, str]) -> ctypes.CDLL | None:
  """Builds ``source`` (once per machine, cached) and registers its FFI handlers for the CPU.

  Args:
    source: the C++ file.
    targets: FFI target name -> the handler symbol the source defines (``XLA_FFI_DEFINE_HANDLER_SYMBOL``).

  Returns:
    The loaded library (for its other exported symbols) once the targets are registered; None when native kernels
    are off or the build failed (warned once).
  """
  if not enabled():
    return None
  return _load(str(pathlib.Path(source).resolve()), tuple(sorted(targets.items())))


@functools.lru_cache(maxsize=None)
def _load(source: str, targets: tuple[tuple[str, str], ...]) -> ctypes.CDLL | None:
  with _lock:
    try:
      lib = ctypes.CDLL(str(_build(pathlib.Path(source))))
      for name, symbol in targets:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    except (OSError, subprocess.CalledProcessError, AttributeError) as e:
      detail = getattr(e, "stderr", "") or str(e)
      warnings.warn(f"lpnum: could not build the native CPU kernel {pathlib.Path(source).name}; the XLA path "
                    f"runs instead (set LPNUM_NATIVE=0 to silence this). {detail[-2000:]}", RuntimeWarning,
                    stacklevel=3)
      return None
  return lib


def _compiler() -> list[str]:
  cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
  if not cxx:
    raise OSError("no C++ compiler found (set CXX)")
  return shlex.split(cxx)


def _library(source: pathlib.Path, cxx: list[str]) -> pathlib.Path:
  """Where the library built from ``source`` by the compiler ``cxx`` is cached: named by the hash of everything the
  build depends on."""
  version = subprocess.run([*cxx, "--version"], capture_output=True, text=True, check=True).stdout
  arch = [flag for flag in FLAGS if flag.startswith("-march=")]
  target_macros = subprocess.run([*cxx, *arch, "-dM", "-E", "-x", "c++", os.devnull], capture_output=True, text=True,
                                 check=True).stdout
  import jaxlib  # the headers and ABI the library is built against

  key = hashlib.sha256()
  headers = [h.read_bytes() for h in sorted(_HEADERS.glob("*.h"))]
  for part in (source.read_bytes(), *headers, " ".join(FLAGS).encode(), version.encode(), target_macros.encode(),
               jaxlib.__version__.encode(), platform.machine().encode()):
    key.update(part)
    key.update(b"\0")
  cache = pathlib.Path(os.environ.get("LPNUM_NATIVE_CACHE") or pathlib.Path.home() / ".cache" / "lpnum" / "native")
  return cache / f"{source.stem}-{key.hexdigest()[:16]}.so"


def _build(source: pathlib.Path) -> pathlib.Path:
  cxx = _compiler()
  target = _library(source, cxx)
  if target.exists():
    return target
  cache = target.parent
  cache.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
  os.close(fd)
  try:
    subprocess.run([*cxx, *FLAGS, "-I", jax.ffi.include_dir(), "-I", str(_HEADERS), str(source), "-o", tmp], capture_output=True,
                   text=True, check=True)
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return target
