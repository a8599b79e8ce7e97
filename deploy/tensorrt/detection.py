"""TensorRT engines for detectors: the whole detector ONNX graph (resize, backbone, RPN, RoIAlign,
box decoding, NMS) built with one optimisation profile over the image's height and width, and run
with TensorRT's output allocator, since the number of detections is known only after execution.

What TensorRT 10 does with the graph (from its documentation, not run here: TensorRT cannot be
installed on this project's machines): ``NonMaxSuppression``, ``NonZero``, ``RoiAlign`` and
``TopK`` with a constant K (the graph is traced so: :mod:`deploy.static_topk`) are supported by its
ONNX parser; outputs whose size depends on the data
(``boxes``, ``labels``, ``scores``: N detections) have no shape before execution, so each gets an
``IOutputAllocator`` that TensorRT calls with the byte size it needs and the final shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..backends.base import ArtifactLoadError, Detections
from .engine import EngineBackend
from .environment import dims_to_list

SMALLEST_SIDE = 32  # the profile's minimum height and width (the graph upsamples small images anyway)


def detector_profiles(input_name: str, channels: int, min_size: int, max_size: int, max_side: int,
                      min_side: int = SMALLEST_SIDE) -> list[dict[str, dict[str, list[int]]]]:  # fmt: skip
    """One profile for one (C, H, W) image: sides min_side..max_side, tuned for a 4:3 image at the
    detector's own scale (shorter side min_size)."""
    if max_side < max(min_side, SMALLEST_SIDE):
        raise ValueError(f"max_image_side must be at least {max(min_side, SMALLEST_SIDE)}, got {max_side}")
    short = max(min(min_size, max_side), min_side)
    long = min(max(short, min(max_size, round(short * 4 / 3))), max_side)
    return [{input_name: {"min": [channels, min_side, min_side], "opt": [channels, short, long],
                          "max": [channels, max_side, max_side]}}]  # fmt: skip


def make_output_allocator() -> Any:
    """An ``IOutputAllocator`` that keeps each output in a torch CUDA buffer, grown as TensorRT asks."""
    import tensorrt as trt

    class TorchOutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, torch.Tensor] = {}
            self.shapes: dict[str, list[int]] = {}

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            buffer = self.buffers.get(tensor_name)
            if buffer is None or buffer.numel() < size:
                # at least one byte: TensorRT asks for 0 bytes when there are no detections
                buffer = torch.empty(max(size, 1), dtype=torch.uint8, device="cuda")
                self.buffers[tensor_name] = buffer
            return int(buffer.data_ptr())

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int, stream: int) -> int:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: trt.Dims) -> None:
            self.shapes[tensor_name] = dims_to_list(shape)

        def tensor(self, tensor_name: str, dtype: torch.dtype) -> torch.Tensor:
            shape = self.shapes[tensor_name]
            count = 1
            for d in shape:
                count *= d
            element = torch.empty((), dtype=dtype).element_size()
            return self.buffers[tensor_name][: count * element].view(dtype).reshape(shape)

    return TorchOutputAllocator()


class TensorRTDetectionBackend(EngineBackend):
    """A detector engine: one float (C, H, W) image in [0, 1] -> boxes, labels, scores (CPU tensors)."""

    def __init__(self, path: str | Path, sidecar: dict[str, Any], strict_gpu: bool = True) -> None:
        post = sidecar["postprocessing"]
        self.output_names = [post["boxes"], post["labels"], post["scores"]]
        super().__init__(path, sidecar, self.output_names, strict_gpu)
        low, _, high = (dims_to_list(d) for d in self.engine.get_tensor_profile_shape(self.input_name, 0))
        self.min_shape, self.max_shape = low, high
        self.allocator = make_output_allocator()
        for name in self.outputs:
            if not self.context.set_output_allocator(name, self.allocator):
                raise ArtifactLoadError(f"{self.path}: TensorRT refused an output allocator for {name!r}")

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> Detections:
        shape = list(image.shape)
        if len(shape) != 3 or not all(a <= b <= c for a, b, c in zip(self.min_shape, shape, self.max_shape)):
            raise ValueError(f"{self.path}: image of shape {tuple(shape)} is outside the engine's optimisation profile "
                             f"({self.min_shape} to {self.max_shape}); resize it, or export again with a larger "
                             "--max-image-side")  # fmt: skip
        with torch.cuda.stream(self.stream):
            x = image.to("cuda", self.dtypes[self.input_name], non_blocking=True).contiguous()
            if not self.context.set_input_shape(self.input_name, tuple(shape)):
                raise ValueError(f"{self.path}: TensorRT rejected input shape {tuple(shape)}")
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.path}: TensorRT execution failed; see the TensorRT log above")
        self.stream.synchronize()
        boxes, labels, scores = (self.allocator.tensor(n, self.dtypes[n]) for n in self.output_names)
        return boxes.float().cpu().reshape(-1, 4), labels.long().cpu(), scores.float().cpu()
