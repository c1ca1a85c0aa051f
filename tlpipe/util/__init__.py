"""Small helpers every domain shares: atomic writes, errors, hashes, nested dicts, quiet TensorFlow start-up."""
