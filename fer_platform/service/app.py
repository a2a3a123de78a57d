"""The search API (FastAPI, OpenAPI at /openapi.json) and its page at /.

Read-only by construction: the lake is a ``ReadOnlyStorage`` (no method that writes), PostgreSQL is asked
in READ ONLY transactions (``ReadOnlyPool``). The index is read once and kept warm (``LiveIndex``: a new
build of ``search_index`` replaces it once fully read and verified, without a restart). Every error is a
4xx or 503 with the one-line body ``{"error": "..."}``; an API key (``FER_API_KEY``) guards every route but
/health and the page itself (which holds no data), compared in constant time and never logged.
"""

import contextlib
import hmac
import json
import logging
import threading
import time
import urllib.parse
from importlib import resources as package_files
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyCookie, APIKeyHeader
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fer_platform.core.embedding import Embedder, EmbedderSpec, model_id
from fer_platform.core.errors import FerError
from fer_platform.core.gold_plots import GOLD_PLOTS, GoldPlots
from fer_platform.core.images import InvalidImage, as_face, sniff_format
from fer_platform.core.layout import EMOTIONS, SPLITS
from fer_platform.core.pg.pool import ReadOnlyPool
from fer_platform.core.search.index import IndexUnavailable
from fer_platform.core.search.live import LiveIndex
from fer_platform.core.search.query import BACKENDS, QueryError, UnknownImage, find_similar
from fer_platform.service.settings import API_KEY_COOKIE, API_KEY_HEADER, ServeSettings

log = logging.getLogger(__name__)

Emotion = Literal[EMOTIONS]
Backend = Literal[BACKENDS]
Split = Literal[SPLITS]
PlotName = Literal[tuple(GOLD_PLOTS)]
ImageId = Annotated[
    str, Path(pattern=r"^[0-9a-f]{64}$", description="the image's id: the sha256 of its bytes")
]
EmotionFilter = Annotated[Emotion | None, Query(description="only neighbours of this emotion")]
BackendChoice = Annotated[Backend, Query(description="the FAISS index in the lake, or PostgreSQL's pgvector")]
BODY_OVERHEAD = 16 * 1024  # multipart boundaries and part headers around an upload


class ErrorBody(BaseModel):
    error: str


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def _errors(*codes: int) -> dict:
    return {code: {"model": ErrorBody, "description": "one-line error"} for code in codes}


class BodyLimit:
    """A request body larger than ``limit`` bytes gets 413 before it is parsed (by its Content-Length, or
    while it streams in when it has none)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        message = f"the request body is larger than {self.limit} bytes"
        try:
            too_big = declared is not None and int(declared) > self.limit
        except ValueError:
            return await error(400, "the Content-Length header is not a number")(scope, receive, send)
        if too_big:
            return await error(413, message)(scope, receive, send)
        seen, started = 0, False

        async def counted():
            nonlocal seen
            event = await receive()
            seen += len(event.get("body", b""))
            if seen > self.limit:
                raise _TooLarge(self.limit)
            return event

        async def watched(event):
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await error(413, message)(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    """Raised while the body streams in: FastAPI passes an HTTPException through its body parsing."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than {limit} bytes")


class Cors(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in the one-line JSON shape of every error."""

    def preflight_response(self, request_headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        headers = {
            k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")
        }
        return error(400, response.body.decode(errors="replace"), headers)


class Service:
    """What the routes share: the warm index, the embedder's settings, PostgreSQL, the lake, the plots."""

    def __init__(self, settings: ServeSettings, lake, spec: EmbedderSpec, dsn: str | None):
        self.settings, self.lake, self.spec = settings, lake, spec
        self.model = model_id(spec)
        self.live = LiveIndex(lake, self.model, settings.index_check_seconds)
        self.pool = ReadOnlyPool(dsn, settings.pool_size) if dsn else None
        self.plots = GoldPlots(lake)
        self.embedder = "loading"  # for /health: loading, ready, or why it failed

    def start(self) -> None:
        self.live.refresh()  # the first read, before the first request
        # the model loads in the background (torch takes seconds): the first upload does not wait as long
        threading.Thread(target=self._warm_embedder, name="fer-embedder-warmup", daemon=True).start()

    def _warm_embedder(self) -> None:
        try:
            Embedder.get(self.spec)
            self.embedder = "ready"
        except Exception as exc:  # noqa: BLE001 - said again, to the caller, by the first upload
            self.embedder = f"failed: {one_line(str(exc))}"
            log.warning("the embedder could not be loaded: %s", one_line(str(exc)))

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def search(self, k: int, emotion: str | None, backend: str, **query) -> dict[str, Any]:
        t0 = time.perf_counter()
        if backend == "index":
            result = find_similar(
                self.lake,
                self.spec,
                k=k,
                emotion=emotion,
                backend=backend,
                index=self.live.current(),
                **query,
            )
        else:
            if self.pool is None:
                raise ApiError(503, "the pgvector backend has no PostgreSQL here (set FER_PG_DSN)")
            with self.pool.connection() as conn:
                result = find_similar(
                    self.lake, self.spec, k=k, emotion=emotion, backend=backend, conn=conn, **query
                )
        result["took_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        q = result["query"]
        q["url"] = image_url(q["image_id"]) if q.get("filepath") else None
        for hit in result["hits"]:
            hit["url"] = image_url(hit["image_id"])
        return result

    def image_row(self, image_id: str) -> dict[str, Any]:
        index = self.live.current()
        pos = index.position_of(image_id)
        if pos is None:
            raise ApiError(404, f"image {image_id} is not in the index of model {self.model}")
        return {**index.row(pos), "url": image_url(image_id)}


def answer(data: dict[str, Any]) -> Response:
    """A JSON answer, serialised once by ``json`` (the data is plain JSON types already: FastAPI's own
    encoding walks it again and costs more than the search itself)."""
    return Response(json.dumps(data, separators=(",", ":")), media_type="application/json")


def image_url(image_id: str) -> str:
    return f"/images/{image_id}/bytes"


def _static(name: str) -> bytes:
    return package_files.files("fer_platform.service").joinpath(name).read_bytes()


PAGE_HEADERS = {
    # the page loads nothing from elsewhere: its script, its images and its plots come from this service
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self' "
    "'unsafe-inline'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-cache",
}


def create_app(settings: ServeSettings, lake, spec: EmbedderSpec, dsn: str | None) -> FastAPI:
    """The search service over ``lake`` (read-only), the embedder ``spec`` (the model of the index) and
    PostgreSQL at ``dsn`` (None: the pgvector backend answers 503)."""
    service = Service(settings, lake, spec, dsn)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="fer-platform search",
        version="1",
        description="Similarity search over FER2013-shaped face images: by an uploaded image or a stored "
        "image's id, on the FAISS index in the lake or on PostgreSQL's pgvector index. Errors are "
        '`{"error": "..."}`.',
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: not here
        redoc_url=None,
        openapi_url=None,  # served below, behind the API key like every route with data
    )
    app.state.service = service
    _error_handlers(app)
    keyed = _key_check(settings)
    K = Annotated[int, Query(ge=1, le=settings.max_k, description="how many neighbours")]
    image_keyed = _key_check(settings, cookie=True)

    @app.get("/health", tags=["service"], summary="Whether the service answers, and what it serves")
    async def health() -> dict[str, Any]:
        service.live.poke()
        status = service.live.status()
        return {
            "status": "ok" if status["loaded"] else "no index",
            "auth": settings.auth,
            "model": service.model,
            "max_k": settings.max_k,
            "max_upload_bytes": settings.max_upload_bytes,
            "pgvector": service.pool is not None,
            "embedder": service.embedder,
            "index": status,
        }

    @app.get("/openapi.json", include_in_schema=False, dependencies=keyed)
    def openapi() -> dict:
        return app.openapi()

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response(_static("page.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/page.js", include_in_schema=False)
    def page_script() -> Response:
        return Response(_static("page.js"), media_type="text/javascript; charset=utf-8", headers=PAGE_HEADERS)

    @app.post(
        "/search",
        tags=["search"],
        summary="The images nearest to an uploaded face (a PNG or JPEG; made 48x48 grayscale like FER2013)",
        dependencies=keyed,
        responses=_errors(400, 401, 413, 422, 503),
    )
    def search_by_image(
        file: Annotated[UploadFile, File(description="the query image")],
        k: K = 10,
        emotion: EmotionFilter = None,
        backend: BackendChoice = "index",
    ) -> dict[str, Any]:
        data = file.file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(413, f"the upload is larger than {settings.max_upload_bytes} bytes")
        try:
            face = as_face(data)  # a FER2013 image as it is; a photo made 48x48 grayscale
        except InvalidImage as exc:
            raise ApiError(400, f"the upload is not an image to search with: {exc}") from None
        return answer(service.search(k, emotion, backend, image=face))

    @app.get(
        "/images/{image_id}/similar",
        tags=["search"],
        summary="The images nearest to a stored image (itself left out)",
        dependencies=keyed,
        responses=_errors(401, 404, 422, 503),
    )
    async def search_by_id(
        image_id: ImageId, k: K = 10, emotion: EmotionFilter = None, backend: BackendChoice = "index"
    ) -> dict[str, Any]:
        if backend == "index":  # under a millisecond of CPU: answered on the event loop, no thread hand-off
            return answer(service.search(k, emotion, backend, image_id=image_id))
        return answer(await run_in_threadpool(service.search, k, emotion, backend, image_id=image_id))

    @app.get(
        "/images",
        tags=["images"],
        summary="Some stored images (in turn from each emotion), for picking a query",
        dependencies=keyed,
        responses=_errors(401, 422, 503),
    )
    def list_images(
        split: Annotated[Split | None, Query(description="only this split")] = None,
        emotion: Annotated[Emotion | None, Query(description="only this emotion")] = None,
        limit: Annotated[int, Query(ge=1, le=500, description="at most this many")] = 50,
    ) -> dict[str, Any]:
        rows = service.live.current().rows(split=split, emotion=emotion, limit=limit)
        return {"model": service.model, "images": [{**r, "url": image_url(r["image_id"])} for r in rows]}

    @app.get(
        "/images/{image_id}",
        tags=["images"],
        summary="A stored image's metadata: emotion, split, load date, lake path",
        dependencies=keyed,
        responses=_errors(401, 404, 422, 503),
    )
    async def image_metadata(image_id: ImageId) -> dict[str, Any]:
        return answer(service.image_row(image_id))

    @app.get(
        "/images/{image_id}/bytes",
        tags=["images"],
        summary="A stored image's bytes, from the lake",
        dependencies=image_keyed,
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}, "image/jpeg": {}}, "description": "the image"},
            **_errors(401, 404, 422, 503),
        },
    )
    def image_bytes(image_id: ImageId) -> Response:
        row = service.image_row(image_id)
        try:
            data = lake.read_bytes(row["filepath"])
        except FileNotFoundError:
            raise ApiError(404, f"image {image_id} is in the index but missing from the lake") from None
        except OSError as exc:  # a lake that refuses the read: the service's trouble, said in one line
            raise FerError(f"the lake cannot be read: {one_line(str(exc))}") from None
        media = "image/jpeg" if sniff_format(data) == "JPEG" else "image/png"
        return Response(
            data, media_type=media, headers={"Cache-Control": "private, max-age=86400, immutable"}
        )

    @app.get(
        "/plots",
        tags=["gold"],
        summary="The gold plots that can be drawn now",
        dependencies=keyed,
        responses=_errors(401),
    )
    def list_plots() -> dict[str, Any]:
        return {
            "plots": [
                {"name": n, "title": GOLD_PLOTS[n][1], "url": f"/plots/{n}"}
                for n in service.plots.available()
            ]
        }

    @app.get(
        "/plots/{name}",
        tags=["gold"],
        summary="A gold plot (PNG), drawn from its gold table in the lake",
        dependencies=image_keyed,
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "the plot"},
            **_errors(401, 404, 422),
        },
    )
    def plot(name: PlotName) -> Response:
        png = service.plots.png(name)
        if png is None:
            raise ApiError(404, f"no gold table for the {name} plot yet: materialise gold")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-cache"})

    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + BODY_OVERHEAD)
    if settings.cors_origins:
        app.add_middleware(
            Cors,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[API_KEY_HEADER, "content-type"],
        )
    return app


def _key_check(settings: ServeSettings, cookie: bool = False) -> list:
    """The route dependency that asks for the API key (none when no key is set). ``cookie``: the key may
    also come as the page's cookie (an <img> element cannot send a header)."""
    if not settings.api_key:
        return []
    expected = settings.api_key.encode()
    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="the service's API key")
    from_cookie = APIKeyCookie(name=API_KEY_COOKIE, auto_error=False, description="the key, set by the page")

    def check(given: str | None = Depends(header)) -> None:
        if not (given and hmac.compare_digest(given.encode(), expected)):
            raise ApiError(401, f"a valid {API_KEY_HEADER} header is required")

    def check_with_cookie(
        given: str | None = Depends(header), cookie_value: str | None = Depends(from_cookie)
    ) -> None:
        candidate = given or (urllib.parse.unquote(cookie_value) if cookie_value else None)
        if not (candidate and hmac.compare_digest(candidate.encode(), expected)):
            raise ApiError(401, f"a valid {API_KEY_HEADER} header is required")

    return [Depends(check_with_cookie if cookie else check)]


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "ApiKey"} if exc.status == 401 else None
        return error(exc.status, str(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:3]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "path", "body", "header"))
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        return error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(UnknownImage)
    async def unknown(_request: Request, exc: UnknownImage) -> JSONResponse:
        return error(404, str(exc))

    @app.exception_handler(QueryError)
    async def bad_query(_request: Request, exc: QueryError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(IndexUnavailable)
    async def no_index(_request: Request, exc: IndexUnavailable) -> JSONResponse:
        return error(503, str(exc))

    @app.exception_handler(FerError)
    async def unavailable(_request: Request, exc: FerError) -> JSONResponse:
        return error(503, str(exc))  # PostgreSQL out of reach, the embedder's weights missing: one line

    @app.exception_handler(Exception)
    async def crashed(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error(500, "internal error (the service's log has the details)")
