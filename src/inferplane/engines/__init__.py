"""Inference engines we run ourselves: the real vLLM CPU build with a tiny Nemotron-NAS checkpoint.

`vllm` (production, GPU) runs in the cluster and `simulator` is `inferplane.simulator`; this package
holds `vllm-cpu`: real vLLM on CPU, for the contract tests and `inferplane dev --engine vllm-cpu`.
"""
