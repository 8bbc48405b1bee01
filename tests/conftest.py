import os

# One XLA thread pool shared by the 2 cores; no GPU probing noise in the logs.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
