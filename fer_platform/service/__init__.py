"""`fer-platform serve`: the search API (FastAPI, with its OpenAPI document) and its web page.

    settings  every setting of the service, from the environment (host, port, API key, CORS, caps)
    app       the FastAPI application: routes, the API key, one-line JSON errors; page.html + page.js
    server    the command: resources of this environment, the listening socket, uvicorn

The search itself is ``core.search`` (``query.find_similar`` on the index kept warm by ``live.LiveIndex``).
"""
