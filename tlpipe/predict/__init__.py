"""Batch prediction with the exported ONNX model: inputs, the run, the CSV outputs."""
