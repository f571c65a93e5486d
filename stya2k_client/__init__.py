"""stya2k-client: the Python client of StyA2K Serve (sync and async, jobs, video, preset styles); needs httpx only.

Installed alone with ``pip install ./clients/python`` (no torch), and included in the server's own distribution,
where ``service.client`` re-exports it. Everything is in :mod:`stya2k_client.client`; the command line is
:mod:`stya2k_client.cli` (``stya2k-client``).
"""

from stya2k_client.client import *  # noqa: F403
from stya2k_client.client import __all__ as _client_all

__version__ = "0.1.0"  # = the server's version (pyproject.toml); a test keeps them equal
__all__ = [*_client_all, "__version__"]
