"""The browser annotator (``samforge annotate``): a FastAPI app serving a static page that segments
with the model in the loop, saves labels per image and exports a dataset the trainer reads."""

from samforge.serve.app import create_app
from samforge.serve.server import ServerThread, check_host, serve

__all__ = ["ServerThread", "check_host", "create_app", "serve"]
