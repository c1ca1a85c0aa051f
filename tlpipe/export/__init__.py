"""Keras to ONNX: the converter, the reduced-precision variants, the ONNX model contract and sessions."""
