"""FastAPI gateway in front of TorchServe: multipart uploads in, raw-byte predictions out."""
