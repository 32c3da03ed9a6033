"""multiplex: an HTTP/1.1, HTTP/2 and HTTP/3 ASGI server."""

__version__ = "0.1.0"
