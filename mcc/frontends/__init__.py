"""Frontends: PyTorch modules and ONNX files into mcc's graph IR."""
