"""D²Pruner lab — the Gradio app (not built yet).

The interactive app (attention / prior / relative-attention heatmaps, the hybrid graph, each method's kept
tokens, answers and boxes) is tracked in issue 5. Until it lands this file says so plainly instead of
pretending to work; the library underneath (`d2pruner.select`, `d2pruner.hybrid_graph`, ...) is usable now.
"""

from __future__ import annotations

import sys


def main() -> int:
    print(
        "D²Pruner lab: the interactive app is not built yet (tracked in issue 5).\n"
        "The selection library works now, e.g.:\n"
        '  python -c "import torch, d2pruner; print(d2pruner.select(\'fastv\', n=3, attention=torch.rand(16)))"',
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
