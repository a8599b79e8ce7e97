"""Running a serialised TensorRT engine (TensorRT 10's tensor-address API, buffers as torch CUDA tensors)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..backends.base import ArtifactLoadError
from .environment import check_engine_compatibility, dims_to_list, require_tensorrt, running_environment

if TYPE_CHECKING:
    import tensorrt as trt

TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT8": torch.int8, "INT32": torch.int32,
                 "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8, "BF16": torch.bfloat16}  # fmt: skip


@cache
def _logger() -> trt.ILogger:
    """One logger for every runtime (TensorRT keeps a pointer to it: it must outlive them)."""
    import tensorrt as trt

    return trt.Logger(trt.Logger.WARNING)


def open_engine(path: Path, sidecar: dict[str, Any],
                strict_gpu: bool = True) -> tuple[trt.Runtime, trt.ICudaEngine, trt.IExecutionContext]:  # fmt: skip
    """(runtime, engine, execution context) for the engine at ``path``, after checking that its
    sidecar's TensorRT version and GPU match this machine (see :func:`check_engine_compatibility`)."""
    require_tensorrt()
    import tensorrt as trt

    check_engine_compatibility(sidecar["tensorrt"], running_environment(), path, strict_gpu)
    runtime = trt.Runtime(_logger())
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ArtifactLoadError(f"{path}: TensorRT could not deserialise the engine (corrupt, or built with "
                                "other TensorRT plugins?); see the TensorRT log above")  # fmt: skip
    context = engine.create_execution_context()
    if context is None:
        raise ArtifactLoadError(f"{path}: TensorRT could not create an execution context (GPU memory?)")
    return runtime, engine, context


class EngineBackend:
    """An opened engine whose tensors are the ones its sidecar names: one input, ``outputs`` among its outputs."""

    name = "tensorrt"
    device = "cuda"

    def __init__(self, path: str | Path, sidecar: dict[str, Any], outputs: list[str], strict_gpu: bool = True) -> None:
        require_tensorrt()
        import tensorrt as trt

        self.path = Path(path)
        self.runtime, self.engine, self.context = open_engine(self.path, sidecar, strict_gpu)
        names = [self.engine.get_tensor_name(index) for index in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_name = sidecar["inputs"][0]["name"]
        if self.inputs != [self.input_name] or not set(outputs) <= set(self.outputs):
            raise ArtifactLoadError(f"{self.path}: the sidecar names input {self.input_name!r} "
                                    f"and output(s) {outputs}; "
                                    f"the engine has inputs {self.inputs} and outputs {self.outputs}")  # fmt: skip
        self.dtypes = {n: TORCH_DTYPES[self.engine.get_tensor_dtype(n).name] for n in names}
        self.stream = torch.cuda.Stream()


class TensorRTBackend(EngineBackend):
    """A classifier engine: a normalised (N, C, H, W) batch -> logits (CPU float32)."""

    def __init__(self, path: str | Path, sidecar: dict[str, Any], strict_gpu: bool = True) -> None:
        self.output_name = sidecar["postprocessing"]["output"]
        super().__init__(path, sidecar, [self.output_name], strict_gpu)
        _, _, max_shape = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.max_batch: int | None = dims_to_list(max_shape)[0]

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.cuda.stream(self.stream):
            x = batch.to("cuda", self.dtypes[self.input_name], non_blocking=True).contiguous()
            if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
                raise ValueError(
                    f"{self.path}: input shape {tuple(x.shape)} is outside the engine's optimisation profile"
                )
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            outputs = {}
            for name in self.outputs:
                shape = dims_to_list(self.context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device="cuda")
                self.context.set_tensor_address(name, outputs[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.path}: TensorRT execution failed; see the TensorRT log above")
        self.stream.synchronize()
        return outputs[self.output_name].float().cpu()
