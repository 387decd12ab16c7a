"""RouteNLP: closed-loop LLM routing with conformal cascading and distillation."""

__version__ = "0.1.0"
