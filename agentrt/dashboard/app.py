"""The dashboard's web app (FastAPI): one page over the store and the JSON endpoints behind it.

    agentrt dashboard [--db agentrt.db] [--host 127.0.0.1] [--port 8050] [--tenant-keys keys.json]

Endpoints (all GET, JSON; errors are `{"detail": ...}` with 401 or 404):
    /api/runs                        runs, newest first: id, name, backend, config, started_at,
                                     finished_at, live, programs
    /api/runs/{run_id}               headline: programs, by_status, unfinished, jct_mean_s / p50 / p95 /
                                     p99, makespan_s, throughput_programs_per_s, token counts,
                                     prefix_hit_rate, dhd_hit_rate (null: not recorded, e.g. openai backend), pins by outcome,
                                     per_program, live
    /api/runs/{run_id}/timeline      programs (one row each) and spans (queue, prefill, decode, tool)
                                     and pins (hit, expired, released, holding), seconds since run start
    /api/runs/{run_id}/jct           CDF points (jct_s, p) of finished programs
    /api/runs/{run_id}/tools         every tool call: name, actual_s, predicted_s, ttl_s
    /api/runs/{run_id}/kv            engine samples: t, used, pinned, free, total, running, waiting
    /api/programs/{program_id}       a program and its turns: LLM calls (prompt, output) and tool calls
                                     (arguments, output, pin)
The page (`/`, `static/`) uses nothing but these and the chart libraries vendored in `static/vendor/`,
so it works offline. Rows are read afresh on each request: a run still writing is shown live.

Tenancy: with `tenant_keys` (API key -> tenant name) every /api request needs `Authorization: Bearer
KEY` (or `X-API-Key: KEY`) and sees only its tenant's programs (`data` filters by `Program.tenant`);
without it, the app is open, so it binds loopback unless told otherwise. Model output is untrusted
text: the page renders it with textContent, and a Content-Security-Policy forbids inline scripts.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from agentrt.dashboard import data
from agentrt.store import open_db

STATIC = Path(__file__).parent / "static"
# 'unsafe-eval': Vega compiles its expressions to functions; inline scripts stay forbidden
CSP = ("default-src 'none'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def load_tenant_keys(path: str) -> dict[str, str]:
    """A JSON object mapping API key -> tenant name."""
    try:
        keys = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read tenant keys from {path}: {exc}") from None
    if not isinstance(keys, dict) or not keys or not all(isinstance(k, str) and k and isinstance(v, str) and v
                                                         for k, v in keys.items()):
        raise ValueError(f"{path} must be a JSON object mapping API keys to tenant names, e.g. "
                         '{"key-of-team-a": "team-a"}')
    return keys


def create_app(db: str, tenant_keys: dict[str, str] | None = None) -> FastAPI:
    eng = open_db(db)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        eng.dispose()

    app = FastAPI(title="agentrt dashboard", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.exception_handler(data.NotFound)
    async def not_found(_request: Request, exc: data.NotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    def tenant(request: Request) -> str | None:
        if tenant_keys is None:
            return None
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
        # compare against every key in constant time: the response time tells nothing about a key
        found = [t for k, t in tenant_keys.items() if hmac.compare_digest(k.encode(), key.encode())]
        if not key or not found:
            raise HTTPException(401, "this dashboard needs an API key: Authorization: Bearer KEY",
                                headers={"WWW-Authenticate": "Bearer"})
        return found[0]

    def route(path: str, fn: Callable) -> None:
        def endpoint(key: str, t: str | None = Depends(tenant)) -> dict:
            return fn(eng, key, t)
        app.add_api_route(path, endpoint, methods=["GET"])

    @app.get("/api/runs")
    def runs(t: str | None = Depends(tenant)) -> list[dict]:
        return data.list_runs(eng, t)

    route("/api/runs/{key}", data.run_summary)
    route("/api/runs/{key}/timeline", data.timeline)
    route("/api/runs/{key}/jct", data.jct_cdf)
    route("/api/runs/{key}/tools", data.tool_calls)
    route("/api/runs/{key}/kv", data.kv_usage)
    route("/api/programs/{key}", data.program_detail)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def run_dashboard(db: str, host: str = "127.0.0.1", port: int = 8050, tenant_keys: dict[str, str] | None = None) -> None:
    import uvicorn

    print(f"agentrt dashboard: http://{host}:{port}/  (database {db})", flush=True)
    uvicorn.run(create_app(db, tenant_keys), host=host, port=port, log_level="warning")
