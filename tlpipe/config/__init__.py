"""The typed schema of params.yaml: one module per section, put together in tlpipe.config.params."""
