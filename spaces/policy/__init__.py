"""Policy: which channels and how many. Importance criteria, measured sensitivity, budgets, the
one-shot plans and `fit`, and the COBLA-style allocator.

Private modules: the public names are exported by :mod:`spaces`.
"""
