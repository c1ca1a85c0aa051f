"""Timing ONNX sessions and the Keras baseline, and the benchmark report."""
