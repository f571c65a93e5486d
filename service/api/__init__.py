"""The HTTP edge: the ASGI gateway, the routes, the request parsing and the app's lifespan."""
