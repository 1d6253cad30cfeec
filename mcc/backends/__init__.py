"""Backends: lower an mcc graph to ONNX, a plain torch module, or TVM-compiled code."""
