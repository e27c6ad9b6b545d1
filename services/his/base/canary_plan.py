"""The hospital's canary rollout plan: the percentages of calls a canary may be given, in order.

In his.base, not his.mesh, because `his canary <service> set --help` names the allowed weights
while the command line is parsed (`his.cli`), which `his serve` goes through too: a serving
process must not load the mesh tools, and an image without the mesh extra must still work.
"""

from __future__ import annotations

PLAN = (0, 10, 50, 100)
PLAN_TEXT = " → ".join(map(str, PLAN))
