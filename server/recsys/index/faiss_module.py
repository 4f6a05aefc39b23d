"""The `faiss` module, typed as Any: its bundled stubs lag the library (no SearchParametersHNSW,
wrong constructor signatures), and wrong types are worse than none."""

from typing import Any

import faiss as _faiss

faiss: Any = _faiss
