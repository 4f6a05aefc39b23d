"""Ranker adapters: Triton (KServe V2 over gRPC), in-process ONNX Runtime, and the rule formula."""
