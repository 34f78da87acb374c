"""inferplane: a private, EU-resident, OpenAI-compatible inference service as code."""

__version__ = "0.1.0"
