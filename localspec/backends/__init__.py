"""Backends run batches of tokens through a model and manage its KV cache."""
