"""GPU backend tests.

``test_*_cpu.py`` run on Warp's CPU backend and skip without the ``gpu-cpu`` extra;
``test_cuda.py`` is marked ``gpu`` (deselected by default) and runs with
``pytest -m gpu tests/gpu`` on a machine with CUDA and the ``gpu`` extra.
"""
