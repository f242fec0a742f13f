"""Python client of the modalbench service.

>>> import modalbench
>>> mb = modalbench.Client("http://127.0.0.1:8080")
>>> run = mb.wait(mb.submit("bert-tiny", "demo-news", epochs=1))
>>> mb.metrics(run, key="train/loss")
"""

from .client import Client
from .errors import ApiError, ModalbenchError, RunFailed, StudyFailed
from .resources import Run, Study

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "Client",
    "ModalbenchError",
    "Run",
    "RunFailed",
    "Study",
    "StudyFailed",
    "__version__",
]
