"""The HTTP layer (the only aiohttp code): ``app.py`` (factory, resources), ``middlewares.py``
(errors, auth, CORS, request counts), ``body.py`` (reading multipart / JSON bodies under
limits), ``routes.py`` (thin handlers), ``state.py`` (typed app keys)."""
