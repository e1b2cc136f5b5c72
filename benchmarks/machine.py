"""The one line every benchmark table starts with: which CPU, and whether it has the bf16 units."""
import os


def cpu_line():
    """The CPU model, its core count and which of amx_bf16, amx_tile, avx512_bf16, avx512f it has
    (and OPENBLAS_CORETYPE when it is set: it picks NumPy's GEMM kernel)."""
    model, flags = "?", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "?":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    have = [f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f") if f in flags]
    line = f"CPU: {model}, {os.cpu_count()} cores, flags: {' '.join(have) or 'no amx_bf16/avx512_bf16/avx512f'}"
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return line + (f"; OPENBLAS_CORETYPE={forced}" if forced else "")
