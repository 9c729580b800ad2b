"""The playground's own files build no markup from strings, and need nothing its CSP forbids.

A check on the source (docs/security.md, "No untrusted string reaches markup"): the browser
test (tests/test_security_playground.py) proves one hostile model shows as text; this one keeps
every later change to the page from reopening the hole. Each of the page's ES modules may use
``innerHTML``, ``outerHTML``, ``insertAdjacentHTML``, ``document.write`` or
``createContextualFragment`` only with a constant (a string literal without interpolation);
dom.js's ``el``/``show`` build everything else. The HTML and CSS have no inline script, inline
style, inline event handler or ``data:`` / ``javascript:`` URL (the CSP would block them). The
vendored uPlot is not ours to edit and is left out; it builds its DOM with createElement and
textContent (checked below).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[1] / "serving" / "http" / "static" / "playground"
OWN_JS = sorted(p for p in STATIC.glob("*.js"))
SINKS = re.compile(r"\b(innerHTML|outerHTML|insertAdjacentHTML|createContextualFragment|document\.write(?:ln)?)\b")
# a sink fed a constant: `x.innerHTML = "..."` / '...' / `...` without ${...}, ending the statement
CONSTANT = re.compile(r"""(innerHTML|outerHTML)\s*=\s*("[^"\\$]*"|'[^'\\$]*'|`[^`$\\]*`)\s*;?\s*(//.*)?$""")


def sink_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every markup sink fed anything but a constant (comments skipped)."""
    bad = []
    for n, line in enumerate(text.splitlines(), 1):
        code = line.split("//", 1)[0] if not line.lstrip().startswith("*") else ""
        if SINKS.search(code) and not CONSTANT.search(code.strip()):
            bad.append((n, line.strip()))
    return bad


def test_the_checker_catches_what_it_is_for():
    # the patterns the playground used before (issue 24) are caught; constants and text are not
    assert sink_lines("el.innerHTML = `<b>${m.features}</b>`;")
    assert sink_lines('tip.innerHTML = lines.join("<br>");')
    assert sink_lines("box.insertAdjacentHTML('beforeend', html);")
    assert sink_lines('el.innerHTML = "<b>" + name + "</b>";')
    assert sink_lines("document.write(x);")
    assert not sink_lines('el.innerHTML = "";')
    assert not sink_lines("el.textContent = name; // not innerHTML = name")
    assert not sink_lines("el.replaceChildren();")


@pytest.mark.parametrize("path", OWN_JS, ids=[p.name for p in OWN_JS])
def test_no_markup_sink_is_fed_anything_but_a_constant(path):
    assert OWN_JS, f"no ES modules found under {STATIC}"
    bad = sink_lines(path.read_text(encoding="utf-8"))
    assert bad == [], f"{path.name}: build DOM with dom.js (el/show) instead of HTML strings: {bad}"


@pytest.mark.parametrize("path", OWN_JS, ids=[p.name for p in OWN_JS])
def test_no_inline_style_or_handler_is_written_from_script(path):
    # style="..." or onclick="..." inside a string literal would be blocked by the CSP (or run)
    text = path.read_text(encoding="utf-8")
    found = re.findall(r"""["'`][^"'`]*\b(style|on[a-z]+)\s*=\s*\\?["'][^"'`]*""", text)
    assert found == [], f"{path.name} writes inline styles or handlers into markup: {found}"
    assert "javascript:" not in text.lower()


def test_the_page_and_its_css_need_no_unsafe_inline():
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S | re.I)
    assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts), (
        "inline <script> in index.html"
    )
    assert not re.search(r"<style\b", html, re.I), "inline <style> in index.html"
    assert not re.search(r"\sstyle\s*=", html, re.I), "style attribute in index.html"
    assert not re.search(r"\son[a-z]+\s*=", html, re.I), "inline event handler in index.html"
    assert not re.search(r"""(href|src)\s*=\s*["']\s*(data|javascript):""", html, re.I), "data:/javascript: URL"
    for css in [STATIC / "style.css", *STATIC.glob("vendor/**/*.css")]:
        assert "url(data:" not in css.read_text(encoding="utf-8").replace(" ", ""), (
            f"{css.name}: data: URL (img-src 'self')"
        )


def test_the_vendored_plotting_library_builds_no_markup_from_strings():
    text = "\n".join(p.read_text(encoding="utf-8") for p in STATIC.glob("vendor/**/*.js"))
    assert text and not SINKS.search(text)
