"""Attention and elementwise kernels. Each Triton kernel sits beside a torch reference with the
same signature; the torch references are the CPU backend."""
