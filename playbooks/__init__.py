"""tokenward: hunts, scores and contains Entra ID device code phishing.

``playbooks`` holds the engine and everything that decides; ``connectors``
holds everything that talks to the outside.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tokenward")
except PackageNotFoundError:
    __version__ = "0.0.0"
