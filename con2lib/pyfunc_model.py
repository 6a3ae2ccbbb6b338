"""The import path of the pyfunc in models logged before con2lib was split into layer packages.

Such a model's script says ``from con2lib.pyfunc_model import Con2PyfuncModel``. In a fresh process it
imports the con2lib copy logged with it; where con2lib is already imported (``con2 score``, a notebook),
the name resolves here, to the current class, which loads the same saved state (``STATE_FORMAT`` 1).
"""

from con2lib.serving.pyfunc_model import Con2PyfuncModel

__all__ = ["Con2PyfuncModel"]
