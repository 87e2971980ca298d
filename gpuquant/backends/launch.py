"""The launch recorder's former address (gpuquant.backends.launch), kept because the static
kernel model's recorder (record.py of the SASS tools) imports it from here; the one launch
point is gpuquant.backends.triton.launch."""

from .triton.launch import OPTIONS, launch, recording

__all__ = ["OPTIONS", "launch", "recording"]
