"""One lock around every Hugging Face `from_pretrained` in the process.

transformers builds a model inside context managers that patch torch globally (empty
"meta" weights, default dtype) for the duration of the load. Two threads loading at once
(the closed loop's strategy chains, labelling tiers side by side) can each see the other's
patch and end up with meta tensors ("Cannot copy out of meta tensor") or silently
uninitialised weights. Loads are rare and seconds long; serialising them costs nothing
that matters, training and inference still run in parallel.

The first import of transformers is taken under the same lock (`hf_classes`): its lazy
module is not safe to initialise from two threads at once ("cannot import name
AutoModelForCausalLM").
"""

from __future__ import annotations

import threading
from typing import Any

HF_LOAD_LOCK = threading.RLock()


def load_pretrained(factory: Any, *args: Any, **kwargs: Any) -> Any:
    """`factory.from_pretrained(*args, **kwargs)` under the process-wide load lock."""
    with HF_LOAD_LOCK:
        return factory.from_pretrained(*args, **kwargs)


def hf_classes(*names: str) -> tuple[Any, ...]:
    """transformers' classes by name, imported under the load lock (thread-safe first import)."""
    with HF_LOAD_LOCK:
        import transformers

        return tuple(getattr(transformers, n) for n in names)
