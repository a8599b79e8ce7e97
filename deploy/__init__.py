"""Export to ONNX / TensorRT / AOTInductor and one runtime over them. Work in progress."""
