"""Pallas kernels; each folder has a pure-JAX reference.py, the kernel and a dispatcher."""
