"""The prediction service: a FastAPI app that predicts a network's test accuracy from an uploaded checkpoint.

Endpoints (all errors answer ``{"error": {"code", "message"}}`` with a 4xx
status for bad input; see :mod:`wsl.serve.validate` for the checks):

``POST /v1/predict``       multipart upload: ``file`` (.safetensors, or .pt/.bin via weights-only
                           torch.load), optional ``arch`` (JSON description or registered name, never
                           code) and ``predictor`` (name of a loaded predictor)
``POST /v1/predict/hub``   JSON ``{"uri": "hf://ORG/NAME[@REV][/PATH]", "arch"?, "predictor"?}``
``GET /v1/predictors``     loaded predictors with their cards (training zoo, Kendall tau, R², family,
                           calibration, the zoo's accuracy histogram when known)
``GET /v1/examples``       bundled example checkpoints (``models/examples``), ``GET /v1/examples/{file}``
``GET /healthz``           liveness plus worker/queue state
``GET /docs``              the API reference (rendered here from ``/openapi.json``; no external assets)
``GET /``                  the web page (``wsl/serve/static``: own HTML/JS/CSS, works offline)

Resource bounds come from :mod:`wsl.serve.limits`: streamed uploads under a
byte cap, an admission limit (``503`` + ``Retry-After``), and a pool of
worker processes with time, CPU and memory limits.
"""


import json
import logging
import re
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

from wsl.errors import ConfigError, WslError
from wsl.serve import ServeError
from wsl.serve.docs_page import render_docs
from wsl.serve.limits import Admission, WorkerPool, read_multipart, read_small_body
from wsl.serve.validate import prevalidate

log = logging.getLogger("wsl.serve")
_REGISTERED = re.compile(r"^[A-Za-z_]\w*\s*(\(.*\))?$", re.DOTALL)  # a registered name, maybe with literal args
STATIC = Path(__file__).resolve().parent / "static"
_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
_UPLOAD_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": ".safetensors or torch.save .pt/.bin"},
        "arch": {"type": "string", "description": "architecture: JSON description or registered name"},
        "predictor": {"type": "string", "description": "name of a loaded predictor (GET /v1/predictors)"}}}}}}}
_HUB_SCHEMA = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["uri"], "properties": {
        "uri": {"type": "string", "example": "hf://ORG/NAME"}, "arch": {"type": "string"},
        "predictor": {"type": "string"}}}}}}}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def resolve_predictors(refs: Sequence[str] | None) -> list[tuple[str, str]]:
    """``(name, directory)`` of every predictor to serve (default: all shipped ones), loaded once to check them."""
    from wsl.predict import get_predictor, shipped

    refs = list(refs or [str(path) for _, path, _ in shipped()])
    if not refs:
        raise ConfigError("no predictors to serve: pass --predictor DIR (or an hf:// URI / shipped name), or set "
                          "WSL_MODELS_DIR to a directory of shipped predictors")
    out: list[tuple[str, str]] = []
    for ref in refs:
        p = get_predictor(ref)
        name = str(getattr(p, "name", "") or Path(str(p.path)).name)
        if any(name == n for n, _ in out):
            raise ConfigError(f"two predictors are both named {name!r} ({ref}); serve each name once")
        out.append((name, str(p.path)))
    return out


class SecurityHeaders:
    """ASGI middleware adding nosniff / CSP / framing headers to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                            (b"x-frame-options", b"DENY"), (b"content-security-policy", _CSP.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, wrapped)


def _examples(directory: Path | None) -> dict[str, dict[str, Any]]:
    if directory is None or not (directory / "examples.json").is_file():
        return {}
    from wsl.predict.examples import load_examples

    try:
        entries = load_examples(directory)
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s/examples.json: %s", directory, exc)
        return {}
    out = {}
    for e in entries:
        name = str(e.get("file", ""))
        if name and "/" not in name and "\\" not in name and not name.startswith(".") and (directory / name).is_file():
            out[name] = {k: e.get(k) for k in ("file", "zoo", "model_id", "test_accuracy", "num_parameters")}
    return out


def create_app(predictors: Sequence[str] | None = None, max_upload_mb: float = 200, *, workers: int = 1,
               max_queue: int = 16, time_limit_s: float = 60.0, cpu_limit_s: float = 60.0, memory_mb: int = 4096,
               queue_timeout_s: float | None = 120.0, upload_timeout_s: float = 300.0,
               tmp_dir: str | Path | None = None,
               examples_dir: str | Path | None = None, handler: str = "wsl.serve.validate:handle_job") -> Any:
    """The FastAPI app. ``predictors``: directories, ``hf://`` URIs or shipped names (default: all shipped).

    ``workers`` prediction processes; at most ``workers + max_queue`` requests
    in flight. Per job: ``time_limit_s`` wall clock, ``cpu_limit_s`` CPU time,
    ``memory_mb`` address space on top of a worker's baseline; an upload may
    take ``upload_timeout_s``. ``handler`` is
    the ``module:function`` a worker runs per job (a seam for tests).
    """
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
        from fastapi.staticfiles import StaticFiles
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException
    except ImportError as exc:
        raise ConfigError(f"the prediction service needs the 'serve' extra (pip install 'wsl[serve]'): {exc}") from exc
    from wsl import __version__

    if max_upload_mb <= 0 or workers < 1 or max_queue < 0:
        raise ConfigError("max_upload_mb must be > 0, workers >= 1 and max_queue >= 0")
    served = resolve_predictors(predictors)
    names = [n for n, _ in served]
    cards = [predictor_card(n, d) for n, d in served]
    max_bytes = int(max_upload_mb * 1024 * 1024)
    own_tmp = tmp_dir is None
    tmp = Path(tempfile.mkdtemp(prefix="wsl-serve-") if tmp_dir is None else tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    if examples_dir is None:
        from wsl.predict import models_dir

        root = models_dir()
        examples_dir = root / "examples" if root else None
    examples = _examples(Path(examples_dir) if examples_dir else None)
    pool = WorkerPool(workers, init="wsl.serve.validate:init_worker", init_args=(served, max_bytes),
                      handler=handler, time_limit_s=time_limit_s, cpu_limit_s=cpu_limit_s, memory_mb=memory_mb)
    admission = Admission(workers + max_queue, workers)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await pool.start()
        log.info("serving predictors %s with %d worker(s); uploads up to %.0f MB in %s", names, workers,
                 max_upload_mb, tmp)
        try:
            yield
        finally:
            pool.close()
            if own_tmp:
                shutil.rmtree(tmp, ignore_errors=True)

    app = FastAPI(title="wsl prediction service", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Predict a trained network's test accuracy from its weights alone.")
    app.state.tmp_dir, app.state.pool, app.state.admission, app.state.predictors = tmp, pool, admission, served
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid_request", str(exc.errors())[:1000]), 422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(error_body("internal_error", f"internal error: {type(exc).__name__}"), 500)

    async def run_job(job: dict[str, Any]) -> JSONResponse:
        out = await pool.run(job, queue_timeout_s)
        if not out.get("ok"):
            raise ServeError(out["status"], out["code"], out["message"])
        return JSONResponse(out["prediction"])

    def options(fields: dict[str, Any], allowed: set[str]) -> tuple[str | None, str | None]:
        extra = sorted(set(fields) - allowed)
        if extra:
            raise ServeError(422, "unknown_field", f"unknown field(s) {extra}; allowed: {sorted(allowed)}")
        pred, arch = fields.get("predictor") or None, fields.get("arch") or None
        for key, val in (("predictor", pred), ("arch", arch)):
            if val is not None and not isinstance(val, str):
                raise ServeError(422, "invalid_field", f"field {key!r} must be a string")
        if arch is not None and not (arch.lstrip().startswith("{") or _REGISTERED.match(arch.strip())):
            raise ServeError(422, "invalid_architecture", f"architecture {arch[:100]!r}: the service accepts only a "
                             "JSON description ('{...}') or a registered name like 'small_cnn(channels=[16, 16])'; "
                             "never file paths or code references")
        if pred is not None and pred not in names:
            raise ServeError(404, "unknown_predictor", f"no predictor named {pred[:100]!r}; loaded: {', '.join(names)}")
        return pred, arch

    @app.post("/v1/predict", summary="Predict the test accuracy of an uploaded checkpoint", response_model=None,
              openapi_extra=_UPLOAD_SCHEMA)
    async def predict_upload(request: Request) -> JSONResponse:
        started = admission.enter()
        upload = None
        t0 = time.perf_counter()
        try:
            upload = await read_multipart(request, tmp, max_bytes, timeout_s=upload_timeout_s)
            pred, arch = options(upload.fields, {"predictor", "arch"})
            filename = Path(upload.filename.replace("\\", "/")).name[:200] or "upload"
            assert upload.path is not None
            fmt = await run_in_threadpool(prevalidate, upload.path, filename)
            job = {"kind": "file", "path": str(upload.path), "filename": filename, "format": fmt,
                   "arch": arch, "predictor": pred}
            response = await run_job(job)
            log.info("predict %s -> 200 (%.0f ms)", filename, 1000 * (time.perf_counter() - t0))
            return response
        except ServeError as exc:
            log.info("predict -> %d %s: %s", exc.status, exc.code, exc.message[:200])
            raise
        finally:
            if upload is not None and upload.path is not None:
                upload.path.unlink(missing_ok=True)
            admission.leave(started)

    @app.post("/v1/predict/hub", summary="Predict the test accuracy of a checkpoint on the Hugging Face Hub",
              response_model=None,
              openapi_extra=_HUB_SCHEMA)
    async def predict_hub(request: Request) -> JSONResponse:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ServeError(415, "unsupported_media_type", f"expected application/json, got {ctype or 'nothing'!r}")
        started = admission.enter()
        try:
            raw = await read_small_body(request, 64 * 1024)
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):
                raise ServeError(400, "invalid_json", "the request body is not valid JSON") from None
            if not isinstance(body, dict) or not isinstance(body.get("uri"), str):
                raise ServeError(422, "invalid_request", 'expected a JSON object {"uri": "hf://ORG/NAME", ...}')
            pred, arch = options({k: v for k, v in body.items() if k != "uri"}, {"predictor", "arch"})
            from wsl.hub import parse_uri

            try:
                ref = parse_uri(body["uri"])
            except WslError as exc:
                raise ServeError(422, "invalid_hub_uri", str(exc)) from None
            if ref.repo_type != "model":
                raise ServeError(422, "invalid_hub_uri", f"{body['uri']}: expected a model repository "
                                 "(hf://ORG/NAME), not a dataset")
            return await run_job({"kind": "hub", "uri": body["uri"], "arch": arch, "predictor": pred})
        finally:
            admission.leave(started)

    @app.get("/v1/predictors", summary="Loaded predictors and their cards")
    async def list_predictors() -> dict[str, Any]:
        return {"predictors": cards, "default_order": names}

    @app.get("/v1/examples", summary="Bundled example checkpoints")
    async def list_examples() -> dict[str, Any]:
        return {"examples": list(examples.values())}

    @app.get("/v1/examples/{name}", summary="Download a bundled example checkpoint", response_model=None)
    async def get_example(name: str) -> FileResponse:
        if name not in examples:
            raise ServeError(404, "not_found", f"no bundled example named {name[:100]!r}")
        assert examples_dir is not None
        return FileResponse(Path(examples_dir) / name, media_type="application/octet-stream", filename=name)

    @app.get("/healthz", summary="Liveness and load")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok" if pool.alive else "degraded", "workers": pool.alive, "busy": pool.busy,
                "in_flight": admission.in_flight, "capacity": admission.capacity, "restarts": pool.restarts,
                "predictors": names, "max_upload_mb": max_upload_mb}

    index = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False, response_model=None)
    async def page() -> HTMLResponse:
        return HTMLResponse(index)

    @app.get("/favicon.ico", include_in_schema=False, response_model=None)
    async def favicon() -> FileResponse:  # asked for by browsers and tools: a 404 is a console error
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    @app.get("/docs", include_in_schema=False, response_model=None)
    async def docs() -> HTMLResponse:
        return HTMLResponse(render_docs(app.openapi()))

    return app


def predictor_card(name: str, directory: str) -> dict[str, Any]:
    """The public description of a loaded predictor: training zoo, metrics, calibration, family, histogram."""
    cfg = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    tr = cfg.get("training") or {}
    card: dict[str, Any] = {
        "name": name, "model": (cfg.get("model") or {}).get("name"), "target": (cfg.get("target") or {}).get("name"),
        "input_kind": (cfg.get("input") or {}).get("kind"), "accepts": (cfg.get("input") or {}).get("accepts"),
        "training": {k: tr.get(k) for k in ("zoo_name", "num_train", "checkpoints", "architectures") if k in tr},
        "metrics": {k: v for k, v in (cfg.get("metrics") or {}).items() if k in ("val", "test")},
        "calibration": cfg.get("calibration"), "family": cfg.get("family"),
    }
    zoo = str(tr.get("zoo") or "")
    if zoo:  # a Hub URI as is; a local zoo by its name only (no server paths in public answers)
        card["training"]["zoo"] = zoo if zoo.startswith("hf://") else Path(zoo).name
    hist = zoo_histogram(cfg)
    if hist:  # a stored histogram may not name its zoo; the card knows it
        card["histogram"] = {**hist, "zoo": hist.get("zoo") or card["training"].get("zoo_name")}
    readme = Path(directory) / "README.md"
    if readme.is_file():
        card["card"] = readme.read_text(encoding="utf-8", errors="replace")[:20000]
    return card


def zoo_histogram(cfg: dict[str, Any], bins: int = 20) -> dict[str, Any] | None:
    """The training zoo's target distribution: stored in the config, else computed from a local zoo."""
    import numpy as np

    stored = cfg.get("target_histogram") or (cfg.get("training") or {}).get("target_histogram")
    if isinstance(stored, dict) and "edges" in stored and "counts" in stored:
        return stored
    zoo_ref = (cfg.get("training") or {}).get("zoo")
    target = (cfg.get("target") or {}).get("name", "test_accuracy")
    if not isinstance(zoo_ref, str) or zoo_ref.startswith("hf://") or not Path(zoo_ref).is_dir():
        return None
    try:
        from wsl.zoo import load_zoo

        values = np.asarray(load_zoo(zoo_ref).latest().column(target), dtype=float)
    except (WslError, OSError, KeyError, ValueError) as exc:
        log.warning("no accuracy histogram for %s: %s", zoo_ref, exc)
        return None
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    lo, hi = (0.0, 1.0) if target.endswith("accuracy") else (float(values.min()), float(values.max()) or 1.0)
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts], "n": int(len(values)),
            "median": float(np.median(values)), "target": target,
            "zoo": (cfg.get("training") or {}).get("zoo_name") or Path(zoo_ref).name,
            "source": "latest checkpoint of every model"}
