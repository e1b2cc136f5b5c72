"""Redraw docs/backward_html.png: the micro model's backward page (explain --html) in headless
Chromium, op 22 (W_value) selected, 1200 x 820. Run from the repository's root after a change that
moves a line the page shows (the side panel prints the op's backward code as file:line):

    python docs/make_backward_html_png.py

The PNG records what it shows in a text chunk, "backward code" (Linear.backward's file:line), so
that tests/test_teaching.py notices when the picture no longer matches the code.
"""
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, PngImagePlugin

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "backward_html.png"


def main():
    from tinygrad_gpt import explain, functional as F
    from tinygrad_gpt.explain.trace import source_location
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if browser is None:
        print("make_backward_html_png.py: error: no Chromium on PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "backward.html"
        if explain.main(["--model", "micro", "--html", str(page)], file=io.StringIO()) != 0:
            return 1
        shot = Path(tmp) / "shot.png"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--no-first-run", f"--user-data-dir={tmp}/profile", "--window-size=1200,820",
                        "--virtual-time-budget=5000", f"--screenshot={shot}", page.as_uri() + "#step=22"],
                       check=True, capture_output=True, timeout=120)
        info = PngImagePlugin.PngInfo()
        info.add_text("backward code", source_location(F.Linear.backward))
        Image.open(shot).save(OUT, pnginfo=info)
    print(f"wrote {OUT.relative_to(ROOT)} (Linear.backward at {source_location(F.Linear.backward)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
