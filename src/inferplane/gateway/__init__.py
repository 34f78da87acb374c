"""The gateway sidecar: auth, limits, reasoning toggle, metering, ledger and metrics in front of vLLM."""
