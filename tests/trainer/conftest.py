"""Trainer tier: make the two packages importable from a plain checkout (before the editable install),
and keep torch to one thread per process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# In-process tests share 2 busy cores with the multi-process ones: more intra-op threads only thrash.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
for sub in ("operator", "trainer_image"):
    path = str(REPO / sub)
    if path not in sys.path:
        sys.path.insert(0, path)
