"""Shared test configuration: hypothesis profiles and paths.

`default` is fast for local runs; `ci` (selected by `make test`) is deeper but
still seeded and bounded so CI never flakes on a new random example.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=150,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The published vectors live in ../shared/vectors; a copy is kept in tests/vectors
# so that a clone outside the workspace still runs every test.
_SHARED = PROJECT_ROOT.parent / "shared" / "vectors"
VECTORS = _SHARED if _SHARED.is_dir() else PROJECT_ROOT / "tests" / "vectors"
