"""The service's API reference page, rendered from its OpenAPI schema (no Swagger UI from a CDN)."""

from __future__ import annotations

import html
from typing import Any


def render_docs(spec: dict[str, Any]) -> str:
    """A self-contained HTML reference of the OpenAPI schema (no Swagger UI from a CDN)."""
    e = html.escape
    rows = []
    for path, methods in spec.get("paths", {}).items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {})
            fields = ""
            for ctype, content in body.items():
                props = content.get("schema", {}).get("properties", {})
                items = "".join(f"<li><code>{e(k)}</code> {e(v.get('description', v.get('type', '')))}</li>"
                                for k, v in props.items())
                fields += f"<p><code>{e(ctype)}</code></p><ul>{items}</ul>"
            rows.append(f"<section class='card'><h2><span class='method'>{e(method.upper())}</span> "
                        f"<code>{e(path)}</code></h2><p>{e(op.get('summary', ''))}</p>{fields}</section>")
    info = spec.get("info", {})
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(info.get('title', 'API'))} "
            f"reference</title><meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<link rel='stylesheet' href='/static/app.css'>"
            f"<link rel='icon' href='/static/favicon.svg' type='image/svg+xml'></head><body><main>"
            f"<h1>{e(info.get('title', ''))} <small>{e(str(info.get('version', '')))}</small></h1>"
            f"<p>{e(info.get('description', ''))} Machine-readable schema: <a href='/openapi.json'>/openapi.json</a>."
            " Errors answer <code>{\"error\": {\"code\", \"message\"}}</code>.</p>"
            f"{''.join(rows)}<p><a href='/'>Back to the predictor</a></p></main></body></html>")
