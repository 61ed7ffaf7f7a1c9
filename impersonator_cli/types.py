"""The small types every layer shares: paths given by users, and progress callbacks."""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]
# progress(done, total): how many frames (or tuning steps) are done, of `total` (None while unknown).
Progress = Callable[[int, Optional[int]], None]
