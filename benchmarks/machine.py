"""The one line every benchmark table starts with: which CPU, and whether it has the bf16 units."""
import os


def cpu_info():
    """(model name with its family/model numbers, the flags of /proc/cpuinfo as a set); ("?", set())
    where it cannot be read. A bare "AMD EPYC" has been both a Zen 3 (family 25, AVX2 only) and a
    Zen 5 (family 26, AVX-512) here: the numbers tell them apart."""
    model, family, number, flags = "?", None, None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key = line.split(":", 1)[0].strip()
                if key == "cpu family" and family is None:
                    family = line.split(":", 1)[1].strip()
                if key == "model" and number is None:
                    number = line.split(":", 1)[1].strip()
                if line.startswith("model name") and model == "?":
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    if family is not None and number is not None:
        model += f" (family {family}, model {number})"
    return model, flags


def has_bf16_units():
    """True where the CPU multiplies bf16 in hardware (AMX-BF16 or AVX512-BF16): elsewhere
    torch's bf16 autocast ran a 124M step in 240 s against 4.1 s in float32 (RESULTS.md)."""
    flags = cpu_info()[1]
    return "amx_bf16" in flags or "avx512_bf16" in flags


def cpu_line():
    """The CPU model, its core count and which of amx_bf16, amx_tile, avx512_bf16, avx512f, avx2 it has
    (and OPENBLAS_CORETYPE when it is set: it picks NumPy's GEMM kernel)."""
    model, flags = cpu_info()
    have = [f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2") if f in flags]
    line = f"CPU: {model}, {os.cpu_count()} cores, flags: {' '.join(have) or 'no amx_bf16/avx512_bf16/avx512f/avx2'}"
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return line + (f"; OPENBLAS_CORETYPE={forced}" if forced else "")
