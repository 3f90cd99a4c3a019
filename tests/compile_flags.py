"""How the test session compiles (conftest.py sets it for this process and the `main.py` runs
it starts). The tests run tiny programs a few times, so compiling dominates: the tiny VQ-GAN's
train step (with LPIPS and the discriminator) took 25-35 s to compile at XLA's default level,
14-19 s at backend level 0 and 9 s at level 0 without the CPU fusion emitters (one AVX-512
core), as `mesh.RUN_ONCE_COMPILER_OPTIONS` compiles. Runs a test compares are compiled alike."""
FAST_COMPILE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
