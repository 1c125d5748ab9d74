"""The suite's float tolerances rest on the dtype they compare (tests/_tol.py), not on one CPU."""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).parent
# atol=/rtol=/abs=/rel= with a literal below float32's epsilon (1.19e-7): on a float32 value such
# a tolerance tests the CPU's SIMD path, not sepme (issue 14: atol=1e-10 failed on an AMD EPYC).
TINY = re.compile(r"\b(atol|rtol|abs|rel)\s*=\s*([0-9.]+e-([0-9]+))")


def test_no_tolerance_below_float32_resolution() -> None:
    found = []
    for path in sorted(HERE.glob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code, _, comment = line.partition("#")
            if "float64" in comment:  # a float64 comparison, stated on the line
                continue
            for m in TINY.finditer(code):
                if float(m.group(2)) < 1.1920929e-07:
                    found.append(f"{path.name}:{n}: {m.group(0)}")
    assert not found, "tolerances below float32 eps: " + "; ".join(found)
