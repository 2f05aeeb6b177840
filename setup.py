"""Build script for the optional C extension; every other setting lives in pyproject.toml.

``cirron.core._hot`` is the scope hot path in C. It is optional: where it cannot be built (no C
compiler, or not CPython) the install goes on and cirron runs its pure-Python twin, with the same
behaviour at about twice the cost per scope.
"""

import hashlib
import platform
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "cirron/core/_hot.c"
# The module reports the hash of the source it was built from, so a test can tell a stale
# build (an editable install whose C file changed since) from a current one.
digest = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()[:16]

ext_modules = []
if platform.python_implementation() == "CPython":
    ext_modules.append(
        Extension(
            "cirron.core._hot",
            [SOURCE],
            define_macros=[("CIRRON_HOT_SOURCE", f'"{digest}"')],
            optional=True,
        ),
    )

setup(ext_modules=ext_modules)
