"""Render HTML to PNG in a real headless Chromium (the Debian package) driven by Playwright.

    with Renderer() as r:                       # one browser for the whole batch
        res = r.render("<h1>hi</h1>")            # RenderResult: ok, png (bytes), error, width, height, ...
        results = r.render_many(htmls, RenderOptions(full_page=False))

Modes (RenderOptions): full page (default; the document's height, cut at `max_height`) or the viewport only;
`RenderOptions.wcgb_original()` reproduces the original WCGB renderer (1920x1080 viewport, wait 5 s, send PAGE_DOWN
to <body>, wait 1 s, viewport screenshot).

Sandbox for untrusted (model-generated) HTML:
- every request that is not data:/about:/blob: is aborted by a route handler (counted in `blocked_requests`),
  service workers are blocked, and the browser is started with a dead proxy so that whatever escapes the route
  (WebSockets, prefetches) cannot connect either;
- JavaScript runs only while the page loads plus `settle_s` (optionally not at all: javascript=False); loading,
  every screenshot and every script we run have time limits, and a watchdog kills the page's renderer process when
  a call hangs past its limit (a busy loop cannot block the batch);
- the HTML is cut at `max_html_bytes` (`truncated`), the screenshot at `max_height` pixels (`clipped`);
- bytes that are not UTF-8 are decoded with replacement characters (counted in `decode_errors`);
- a page that times out, crashes or hangs becomes a failed RenderResult with its reason; the browser is relaunched
  if it died, and the rest of the batch goes on.

The browser is the system Chromium: $JAXLM_CHROMIUM, else `chromium`/`chromium-browser`/`google-chrome` on PATH
(scripts/setup.sh installs the Debian package when run as root; `playwright install` is not needed).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from jaxlm.errors import ConfigError, JaxlmError

__all__ = ["RenderOptions", "RenderResult", "Renderer", "BrowserNotFoundError", "RenderError", "find_chromium",
           "decode_html", "render_html", "shared_renderer"]


class BrowserNotFoundError(JaxlmError, FileNotFoundError):
    """No Chromium executable (or no playwright package) on this machine."""


class RenderError(JaxlmError):
    """A render that the caller asked to be strict about failed (carries the RenderResult)."""

    def __init__(self, message: str, result: "RenderResult | None" = None):
        super().__init__(message)
        self.result = result


_INSTALL_HINT = ("install the Debian package as root (`apt-get install chromium`, or run scripts/setup.sh as root) "
                 "and the Python package (`pip install -e '.[web]'`), or set JAXLM_CHROMIUM=/path/to/chromium")


def find_chromium() -> str:
    """The Chromium executable: $JAXLM_CHROMIUM, else the first of chromium, chromium-browser, google-chrome."""
    env = os.environ.get("JAXLM_CHROMIUM")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise BrowserNotFoundError(f"JAXLM_CHROMIUM={env!r} is not an executable file")
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    raise BrowserNotFoundError(f"no Chromium found on PATH (chromium, chromium-browser, google-chrome): {_INSTALL_HINT}")


@dataclass(frozen=True)
class RenderOptions:
    width: int = 1280  # viewport (Playwright's default, which Design2Code's screenshots use)
    height: int = 720
    full_page: bool = True  # False: the viewport only
    max_height: int = 12000  # full-page screenshots are cut here (pixels)
    max_html_bytes: int = 4_000_000  # longer HTML is cut (UTF-8 bytes)
    javascript: bool = True
    timeout_s: float = 10.0  # loading the page (set_content until the load event)
    settle_s: float = 0.0  # extra time for scripts / layout after load
    shot_timeout_s: float = 10.0  # each screenshot
    page_down: bool = False  # the original WCGB quirk: press PAGE_DOWN on <body> before a viewport screenshot
    page_down_wait_s: float = 1.0
    device_scale_factor: float = 1.0
    fresh_context: bool = False  # True: a new browser context for every render (slower; nothing is shared)

    def __post_init__(self):
        for name in ("width", "height", "max_height", "max_html_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"RenderOptions.{name}={v!r}: expected a positive int")
        for name in ("timeout_s", "shot_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"RenderOptions.{name}={getattr(self, name)!r}: expected > 0")
        for name in ("settle_s", "page_down_wait_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"RenderOptions.{name}={getattr(self, name)!r}: expected >= 0")

    @staticmethod
    def wcgb_original(**overrides) -> "RenderOptions":
        """The WCGB renderer of MBZUAI-LLM/web2code (code2image.py): 1920x1080, wait 5 s, PAGE_DOWN, wait 1 s,
        viewport screenshot."""
        kw: dict[str, Any] = dict(width=1920, height=1080, full_page=False, settle_s=5.0, page_down=True,
                                  page_down_wait_s=1.0)
        kw.update(overrides)
        return RenderOptions(**kw)

    def replace(self, **kw) -> "RenderOptions":
        return dataclasses.replace(self, **kw)


@dataclass
class RenderResult:
    ok: bool
    png: bytes | None = None
    error: str | None = None  # "timeout: ...", "crash: ...", "hung: ...", "error: ..."
    width: int = 0  # of the PNG
    height: int = 0
    page_height: int = 0  # the document's full height (before max_height)
    truncated: bool = False  # the HTML was cut at max_html_bytes
    clipped: bool = False  # the screenshot was cut at max_height
    decode_errors: int = 0  # invalid UTF-8 sequences replaced
    blocked_requests: int = 0
    seconds: float = 0.0
    passes: list = field(default_factory=list)  # [(script result, png)] for render(..., passes=[js, ...])
    prepared: Any = None  # the value of render(..., prepare=js)

    def image(self):
        """The screenshot as an RGB PIL image (raises RenderError for a failed render)."""
        if not self.ok or self.png is None:
            raise RenderError(f"no image: the render failed ({self.error})", self)
        import io

        from PIL import Image

        return Image.open(io.BytesIO(self.png)).convert("RGB")


def decode_html(html: str | bytes, max_bytes: int) -> tuple[str, int, bool]:
    """(text, invalid UTF-8 sequences replaced, truncated). Bytes are cut at max_bytes before decoding; a str is cut
    at the character whose UTF-8 encoding crosses max_bytes."""
    truncated = False
    if isinstance(html, (bytes, bytearray)):
        raw = bytes(html)
        if len(raw) > max_bytes:
            raw, truncated = _cut_utf8(raw[:max_bytes]), True
        text = raw.decode("utf-8", errors="replace")
        # U+FFFD already in the input is not an error: count only the replacements the decoder made
        errors = text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
        return text, errors, truncated
    if not isinstance(html, str):
        raise RenderError(f"html: expected str or bytes, got {type(html).__name__}")
    if len(html) > max_bytes // 4:  # cheap check first: a char is at most 4 bytes
        enc = html.encode("utf-8", errors="surrogatepass")
        if len(enc) > max_bytes:
            html, truncated = enc[:max_bytes].decode("utf-8", errors="ignore"), True
    n_sur = sum(1 for ch in html if "\ud800" <= ch <= "\udfff")
    if n_sur:  # lone surrogates cannot be sent to the browser
        html = "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in html)
    return html, n_sur, truncated


def _cut_utf8(raw: bytes) -> bytes:
    """Drop a multi-byte character that a cut at the end split (so the cut itself is no decode error)."""
    for back in range(1, min(4, len(raw)) + 1):
        b = raw[-back]
        if b < 0x80:
            return raw
        if b >= 0xC0:  # a lead byte: does its sequence fit in what is left?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return raw if back >= need else raw[:-back]
    return raw


_ALLOWED_SCHEMES = ("data:", "about:", "blob:")


def _proc_table() -> dict[int, tuple[int, str]]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(name)] = (ppid, cmd)
    return out


class Renderer:
    """One headless Chromium reused across renders. Each render navigates a page to a new about:blank document
    (no globals, title or popups carry over); the page and its browser context are reused per viewport / JS
    setting while renders succeed and dropped after a failure (RenderOptions.fresh_context: a new context every
    time)."""

    def __init__(self, options: RenderOptions | None = None, *, executable: str | None = None,
                 hang_grace_s: float = 1.0):
        self.options = options or RenderOptions()
        self.executable = executable or find_chromium()
        self.hang_grace_s = hang_grace_s
        self._marker = f"--jaxlm-renderer={uuid.uuid4().hex}"
        self._pw = None
        self._browser = None
        self._pages: dict[tuple, tuple] = {}
        self._current: RenderResult | None = None
        self._crashed = False
        self.stats = {"renders": 0, "failures": 0, "relaunches": 0, "watchdog_kills": 0}

    # ------------------------------------------------------------------ browser lifetime
    def _launch(self) -> None:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as e:
            raise BrowserNotFoundError(f"the playwright Python package is missing: {_INSTALL_HINT}") from e
        if self._pw is None:
            self._pw = sync_playwright().start()
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-extensions", "--disable-default-apps", "--mute-audio",
                "--disable-domain-reliability", "--metrics-recording-only", "--no-pings",
                "--disable-smooth-scrolling",  # PAGE_DOWN scrolls at once: the screenshot does not depend on timing
                # a dead proxy for everything, loopback included: what escapes the route handler cannot connect
                "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
                "--host-resolver-rules=MAP * ~NOTFOUND", self._marker]
        try:
            self._browser = self._pw.chromium.launch(executable_path=self.executable, args=args, timeout=60_000)
        except Exception as e:
            raise BrowserNotFoundError(f"could not start Chromium at {self.executable!r}: {str(e)[:300]}") from e

    def _ensure(self, force: bool = False):
        if force or self._browser is None or not self._browser.is_connected():
            self._pages.clear()
            if self._browser is not None:
                self.stats["relaunches"] += 1
                try:
                    self._browser.close()
                except Exception:
                    pass
            self._launch()
        return self._browser

    def close(self) -> None:
        self._pages.clear()
        if self._browser is not None:
            try:
                self._browser.close()
            except Exception:
                pass
            self._browser = None
        if self._pw is not None:
            try:
                self._pw.stop()
            except Exception:
                pass
            self._pw = None

    def __enter__(self) -> "Renderer":
        self._ensure()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort; explicit close() / `with` is the contract
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ watchdog
    def _browser_pid(self, table) -> int | None:
        for pid, (_, cmd) in table.items():
            if self._marker in cmd and "--type=" not in cmd:
                return pid
        return None

    def _kill_renderers(self) -> None:
        """Kill this browser's renderer processes (called from the watchdog thread: no Playwright calls here)."""
        table = _proc_table()
        root = self._browser_pid(table)
        if root is None:
            return
        killed = 0
        for pid, (ppid, cmd) in table.items():
            if "--type=renderer" not in cmd:
                continue
            q, seen = ppid, 0
            while q and q != root and q in table and seen < 8:
                q, seen = table[q][0], seen + 1
            if q == root:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except OSError:
                    pass
        self.stats["watchdog_kills"] += killed
        if not killed:  # nothing to kill below it: the browser itself is stuck
            try:
                os.kill(root, signal.SIGKILL)
            except OSError:
                pass

    # ------------------------------------------------------------------ contexts
    @staticmethod
    def _ctx_key(o: RenderOptions) -> tuple:
        return (o.width, o.height, o.device_scale_factor, o.javascript)

    def _page(self, browser, o: RenderOptions):
        """The page for these options: one browser context + page per viewport / JS setting, reused while renders
        succeed (each render navigates to a new about:blank document first); a failed render drops it."""
        key = self._ctx_key(o)
        if key in self._pages:
            return self._pages[key][1]
        ctx = browser.new_context(viewport={"width": o.width, "height": o.height},
                                  device_scale_factor=o.device_scale_factor, java_script_enabled=o.javascript,
                                  service_workers="block", accept_downloads=False)

        def route(r):
            if r.request.url.startswith(_ALLOWED_SCHEMES):
                r.continue_()
            else:
                if self._current is not None:
                    self._current.blocked_requests += 1
                r.abort("blockedbyclient")

        ctx.route("**/*", route)
        page = ctx.new_page()
        page.on("crash", lambda *_: setattr(self, "_crashed", True))
        self._pages[key] = (ctx, page)
        return page

    def _release(self, o: RenderOptions, keep: bool) -> None:
        key = self._ctx_key(o)
        if key not in self._pages:
            return
        ctx, page = self._pages[key]
        try:
            for other in ctx.pages:  # popups opened by the page
                if other is not page:
                    other.close()
        except Exception:
            keep = False
        if not keep:
            del self._pages[key]
            try:
                ctx.close()
            except Exception:
                pass

    # ------------------------------------------------------------------ rendering
    def render(self, html: str | bytes, options: RenderOptions | None = None, *,
               passes: Sequence[str] = (), prepare: str | None = None) -> RenderResult:
        """Render one page. `prepare`: a JavaScript expression evaluated after load, before the first screenshot.
        `passes`: expressions evaluated one after another after the main screenshot, each followed by another
        screenshot of the same region: result.passes = [(value, png), ...]."""
        o = options or self.options
        text, dec_err, truncated = decode_html(html, o.max_html_bytes)
        self.stats["renders"] += 1
        res = self._render_once(text, dec_err, truncated, o, passes, prepare)
        dead = self._browser is None or not self._browser.is_connected() or \
            any(m in (res.error or "") for m in ("has been closed", "Target closed", "Connection closed"))
        if not res.ok and dead and not res.error.startswith(("crash", "hung", "timeout")):  # not the page's fault
            # the browser died (killed, out of memory): start a new one and give the page one more try
            self._ensure(force=True)
            res = self._render_once(text, dec_err, truncated, o, passes, prepare)
        return res

    def _render_once(self, text: str, dec_err: int, truncated: bool, o: RenderOptions,
                     passes: Sequence[str], prepare: str | None) -> RenderResult:
        t0 = time.monotonic()
        res = RenderResult(ok=False, truncated=truncated, decode_errors=dec_err)
        browser = self._ensure()
        limit = o.timeout_s + o.settle_s + (o.page_down_wait_s if o.page_down else 0.0) + \
            o.shot_timeout_s * (1 + len(passes) + bool(prepare)) + self.hang_grace_s
        fired = threading.Event()

        def on_timer():
            fired.set()
            self._kill_renderers()

        timer = threading.Timer(limit, on_timer)
        timer.daemon = True
        self._crashed = False
        ok_page = False
        try:
            timer.start()  # also covers a browser that no longer answers new_context / new_page
            page = self._page(browser, o)
            self._current = res
            page.goto("about:blank", timeout=o.timeout_s * 1000)  # a fresh document (and window) per render
            page.set_content(text, wait_until="load", timeout=o.timeout_s * 1000)
            if o.settle_s:
                page.wait_for_timeout(o.settle_s * 1000)
            if o.page_down:
                page.press("body", "PageDown", timeout=o.shot_timeout_s * 1000)
                page.wait_for_timeout(o.page_down_wait_s * 1000)
            if prepare:
                res.prepared = page.evaluate(prepare)
            shot = self._shot_kwargs(page, o, res)
            res.png = page.screenshot(timeout=o.shot_timeout_s * 1000, **shot)
            for js in passes:
                value = page.evaluate(js)
                res.passes.append((value, page.screenshot(timeout=o.shot_timeout_s * 1000, **shot)))
            res.ok = True
            res.width, res.height = _png_size(res.png)
            ok_page = True
        except Exception as e:  # one bad page never stops a batch
            res.ok, res.png, res.passes = False, None, []
            res.error = self._reason(e, fired.is_set(), self._crashed, o)
            self.stats["failures"] += 1
            if res.error.startswith("timeout") and not fired.is_set():
                self._kill_renderers()  # a page that timed out may be busy: closing it is then slow
        finally:
            timer.cancel()
            self._current = None
            self._release(o, keep=ok_page and not o.fresh_context)
            res.seconds = time.monotonic() - t0
        return res

    @staticmethod
    def _shot_kwargs(page, o: RenderOptions, res: RenderResult) -> dict:
        if not o.full_page:
            res.page_height = o.height
            return {}
        h = page.evaluate("() => Math.max(document.documentElement ? document.documentElement.scrollHeight : 0, "
                          "document.body ? document.body.scrollHeight : 0)")
        h = max(1, int(h or 0))
        res.page_height = h
        if h > o.max_height:
            res.clipped = True
        h = min(max(h, o.height), o.max_height)
        return {"full_page": True, "clip": {"x": 0, "y": 0, "width": o.width, "height": h}}

    @staticmethod
    def _reason(e: Exception, watchdog: bool, crashed: bool, o: RenderOptions) -> str:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if watchdog:
            return f"hung: a browser call did not return within its limit; the renderer was killed ({msg})"
        if crashed or "crash" in msg.lower():
            return f"crash: the page crashed ({msg})"
        if type(e).__name__ == "TimeoutError" or "Timeout" in msg:
            return f"timeout: {msg} (timeout_s={o.timeout_s}, shot_timeout_s={o.shot_timeout_s})"
        return f"error: {type(e).__name__}: {msg}"

    def render_many(self, htmls: Iterable[str | bytes], options: RenderOptions | None = None) -> list[RenderResult]:
        """Render a batch with this one browser; failures are RenderResults with ok=False (never raised)."""
        return [self.render(h, options) for h in htmls]


def _png_size(png: bytes) -> tuple[int, int]:
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n":
        raise RenderError("the browser returned something that is not a PNG")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def render_html(html: str | bytes, options: RenderOptions | None = None) -> RenderResult:
    """One page with a browser of its own (use Renderer for batches)."""
    with Renderer(options) as r:
        return r.render(html)


_SHARED: Renderer | None = None
_SHARED_LOCK = threading.Lock()


def shared_renderer() -> Renderer:
    """A process-wide Renderer (started on first use, closed at exit): for tests and scripts that render from many
    places. Not thread-safe: use it from one thread."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            import atexit

            _SHARED = Renderer()
            _SHARED._ensure()
            atexit.register(_SHARED.close)
        return _SHARED
