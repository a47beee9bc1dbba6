"""Cost: the exact analytic cost of a plan (MACs, params, bytes) and the latency model (device
profiles measured in context, the prediction, the refit).

Private modules: the public names are exported by :mod:`spaces`.
"""
