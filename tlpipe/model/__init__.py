"""The classifier: backbones, ImageNet weights, what fine-tuning unfreezes, test-time augmentation, Keras IO."""
