"""Model and accelerator facts, and the sizing that derives from them."""

from inferplane.catalog.accelerators import ACCELERATORS, AcceleratorSpec, MachineType, get_accelerator
from inferplane.catalog.models import (
    MODELS, ModelSpec, ReasoningParser, ReasoningStyle, Sampling, ToolCalling,
    get_model,
)
from inferplane.catalog.sizing import SizingError, SizingReport, size, smallest_tensor_parallel_size

__all__ = [
    "ACCELERATORS", "AcceleratorSpec", "MachineType", "get_accelerator",
    "MODELS", "ModelSpec", "ReasoningParser", "ReasoningStyle", "Sampling", "ToolCalling", "get_model",
    "SizingError", "SizingReport", "size", "smallest_tensor_parallel_size",
]
