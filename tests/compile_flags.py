"""How the test session compiles (conftest.py sets it for this process and the `main.py` runs
it starts): as `mesh.RUN_ONCE_COMPILER_OPTIONS`, spelled as XLA flags. The tests run tiny
programs a few times, so compiling dominates: the tiny VQ-GAN's train step (with LPIPS and the
discriminator) took 25-35 s to compile at XLA's default level, 14-19 s at backend level 0 and
9 s at level 0 without the CPU fusion emitters (one AVX-512 core). Runs a test compares are
compiled alike. (Importing jax does not start its backends, so conftest may still set
XLA_FLAGS after this import.)"""
from ganime_jax.mesh import RUN_ONCE_COMPILER_OPTIONS

FAST_COMPILE_XLA_FLAGS = " ".join(f"--{name}={str(value).lower()}"
                                  for name, value in RUN_ONCE_COMPILER_OPTIONS.items())
