"""How each artifact is made and checked (``python -m deploy.export`` is the front door).

* :mod:`.common` — options, result, error, moving a checked artifact into place
* :mod:`.onnx_graph` — the fp32 ONNX graph every other artifact starts from
* :mod:`.precision` — fp16 and INT8 (Q/DQ) graphs; :mod:`.images` — calibration and held-out images
* :mod:`.accuracy`, :mod:`.detection_accuracy` — the reduced-precision checks on real images
* :mod:`.openvino_ir` — OpenVINO IR from the checked graph
* :mod:`.classifier`, :mod:`.detector` — the export pipelines (TensorRT builds: :mod:`deploy.tensorrt`)
"""
