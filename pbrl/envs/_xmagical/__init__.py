"""Private parts of :mod:`pbrl.envs.xmagical`: scene description, pymunk world, renderer.

``scene`` needs only NumPy; ``world`` needs pymunk (the ``xmagical`` extra); ``draw`` needs
Pillow. The public suite imports ``world`` only when an env is built.
"""
