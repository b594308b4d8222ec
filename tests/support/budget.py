"""The fuzz suite's budget: bounded, so that it fits CI (well under a minute on two cores).

Set UNIKLAB_FUZZ_EXAMPLES to fuzz longer by hand, e.g. ``UNIKLAB_FUZZ_EXAMPLES=20000``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("UNIKLAB_FUZZ_EXAMPLES", "300"))

# A settings object rather than a profile: loading a profile would change every other test.
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # ASan and the odd megabyte input make timings meaningless
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
