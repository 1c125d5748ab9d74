"""Train circle as benchmarks/results/erase_bar.json records it, with the code of any checkout,
and print the deterministic figures: tells float drift between machines apart from a change in
the code path.

    git worktree add /tmp/old 254e182          # the commit that wrote erase_bar.json
    PYTHONPATH=/tmp/old .venv/bin/python benchmarks/train_circle_at.py /tmp/old 1
    .venv/bin/python benchmarks/train_circle_at.py . 1

Arguments: the checkout's root, torch threads. Settings added since the record take the values
that reproduce it (`benchmarks.reproduce.ADDED_SINCE`).
"""

import importlib.util
import json
import sys
from pathlib import Path

import torch

# the record's settings, as benchmarks/reproduce.py completes them (loaded by path: the
# `benchmarks` package imported below must be the checkout's)
_spec = importlib.util.spec_from_file_location(
    "_reproduce", Path(__file__).with_name("reproduce.py")
)
assert _spec is not None and _spec.loader is not None
_reproduce = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_reproduce)

root = sys.argv[1]
sys.path.insert(0, root)
torch.manual_seed(0)
from benchmarks.erasure import Knobs, Trainer  # noqa: E402
from sepme_engine.toy import load_toy_pipeline  # noqa: E402

record = Path(__file__).parent / "results" / "erase_bar.json"
try:
    from sepme_engine.config import ERASE_DEFAULTS

    rec = json.loads(record.read_text())["settings"]["sepme"]
    if "init" in ERASE_DEFAULTS["toy"]:  # a checkout newer than the record
        ERASE_DEFAULTS["toy"].update({**_reproduce.ADDED_SINCE, **rec})
except ImportError:  # a checkout older than the settings table
    pass
torch.set_num_threads(int(sys.argv[2]))
pipe = load_toy_pipeline()
_, r = Trainer(pipe, Knobs(n=1, n_blank=1, full_prompts=[])).sepme("circle", [])
print(root, {k: r[k] for k in ("iterations", "final_lcor", "m_k", "unet_passes_total")})
