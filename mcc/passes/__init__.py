"""mcc's built-in passes, one module per pass family.

Importing this package imports every module in it, which registers their passes; a new pass
family only needs a new module here.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
