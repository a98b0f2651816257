"""Training and ONNX export for rs-onnx (the only part of the project that imports torch).

Modules: ``models`` (architectures, ``build``), ``data`` (dataset readers, numpy only), ``objectives``
(smoothing noise and training losses), ``train`` (CLI: ``python -m export.train``), ``export_onnx``
(ONNX export with parity check; CLI for untrained models: ``python -m export.export_onnx``).
"""
