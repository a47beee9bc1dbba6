"""Device runtimes and signal handling, apart from the compression core: ONNX Runtime sessions, the
one timing loop, and the stop flag every long loop checks.

Private modules: the public names are exported by :mod:`spaces`.
"""
