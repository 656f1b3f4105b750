"""Group level: designs, OLS/FLAME1 GLMs, permutation inference, clusters, ROIs, clinical stats.

Pure numpy/scipy/pandas kernels; the engine runs them per spatial chunk (GLMs) or per batch of
permutations (inference) and reduces the per-permutation maxima.
"""
