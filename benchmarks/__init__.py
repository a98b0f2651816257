"""Benchmarks of rs-onnx: ``python -m benchmarks.run`` (engine throughput), ``python -m benchmarks.bench_distributed``."""
