"""The public web app (home page now; the digest adds its pages through extensions)."""

from forum.web.app import (
    I18N_KEY,
    RENDERER_KEY,
    SETTINGS_KEY,
    Renderer,
    create_app,
    language_of,
    matrix_to,
    page_language,
    render_page,
    run_web,
)

__all__ = [
    "I18N_KEY",
    "RENDERER_KEY",
    "SETTINGS_KEY",
    "Renderer",
    "create_app",
    "language_of",
    "matrix_to",
    "page_language",
    "render_page",
    "run_web",
]
