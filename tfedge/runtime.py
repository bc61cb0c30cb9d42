"""The TFLite interpreter on this machine: ai-edge-litert, else tflite-runtime.

The detection logic lives in the standalone device script (it must run on a bare board
without tfedge); the host side uses the very same code.
"""
from .device.bench_device import load_interpreter  # noqa: F401
