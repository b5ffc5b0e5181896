"""The top floor: the only package that knows FastAPI and Starlette. It parses requests, calls
the service, and encodes what comes back; `create_app` assembles it."""
