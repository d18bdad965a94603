"""The public web app (home page now; the digest adds its pages through extensions)."""

from forum.web.app import (
    I18N_KEY,
    RENDERER_KEY,
    SETTINGS_KEY,
    Renderer,
    create_app,
    join_context,
    language_of,
    matrix_to,
    page_language,
    render_page,
    run_web,
    site_url,
)

__all__ = [
    "I18N_KEY",
    "RENDERER_KEY",
    "SETTINGS_KEY",
    "Renderer",
    "create_app",
    "join_context",
    "language_of",
    "matrix_to",
    "page_language",
    "render_page",
    "run_web",
    "site_url",
]
