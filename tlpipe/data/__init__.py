"""Raw sources (one module each, behind the registry in tlpipe.data.sources), splits and the prepared-data contract."""
