"""Importing torch without holding up other threads: its libraries loaded outside Python's lock.

Importing torch takes seconds in a fresh process; the plugin does it in worker threads (napari's docks)
or next to other work (the whole-slide process segments its first tiles meanwhile).
"""

from __future__ import annotations

import sys

# the libraries behind ``import torch`` on Linux, in load order (libtorch.so pulls in CUDA's where present)
TORCH_LIBRARIES = ("libc10.so", "libtorch_cpu.so", "libtorch.so", "libtorch_python.so")


def prepare_torch() -> None:
    """Import torch and its optimiser stack safely, in a thread other than napari's GUI thread.

    Loading triton's LLVM after napari's OpenGL context exists segfaults under Mesa (software GL, Xvfb):
    the first optimiser step imports ``torch._dynamo``, which imports triton. Triton only serves GPUs, so on
    machines without CUDA it is kept out of the process.
    """
    load_torch_libraries_unlocked()
    import torch

    if not torch.cuda.is_available() and "triton" not in sys.modules:
        sys.modules["triton"] = None  # "import triton" then raises ImportError, and torch skips it
    import torch._dynamo  # noqa: F401


def load_torch_libraries_unlocked() -> None:
    """Load torch's shared libraries without holding the interpreter lock (Linux; elsewhere nothing).

    An import holds Python's lock while it loads an extension's libraries, and libtorch's take about half
    a second to load and initialise: other threads could not run for that long. ``dlopen`` called through
    ctypes runs without the lock; the import then finds the libraries loaded (they stay local: symbols are
    resolved as the import would).
    """
    import ctypes
    import importlib.util
    import os
    from pathlib import Path

    spec = importlib.util.find_spec("torch") if "torch" not in sys.modules else None
    if not sys.platform.startswith("linux") or spec is None or not spec.submodule_search_locations:
        return
    folder = Path(spec.submodule_search_locations[0]) / "lib"
    dlopen = ctypes.CDLL(None).dlopen
    dlopen.restype, dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
    for name in TORCH_LIBRARIES:
        if (folder / name).is_file():
            dlopen(str(folder / name).encode(), os.RTLD_NOW | os.RTLD_LOCAL)


def torch_ready() -> bool:
    """Whether torch is already imported and prepared in this process (:func:`prepare_torch`)."""
    return "torch._dynamo" in sys.modules
