"""`localspec serve`: an OpenAI-compatible HTTP front end over one `Session`."""

from localspec.server.app import create_app
from localspec.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
