"""The model graph and surgery: tracing (groups, layers, positions), head-prunable attention, the
torch-pruning adapter, the surgery that builds a plan, and the self-check that refuses a model it cannot
build exactly.

Private modules: the public names are exported by :mod:`spaces`.
"""
