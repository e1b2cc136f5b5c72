"""PyTorch's CPU random stream, bit for bit: torch.manual_seed(s) gives the numbers PyTorch gives.

PyTorch's CPU generator (aten/src/ATen/CPUGeneratorImpl.cpp) is a 32-bit Mersenne Twister
seeded as MT19937's `init_genrand(seed & 0xffffffff)` (NumPy's legacy RandomState seeds it the
same way), plus two cached Box-Muller halves. Every distribution is a transformation of its
32-bit words (aten/src/ATen/core/TransformationHelper.h, DistributionsHelper.h):

- `random()`: one word; `random64()`: two, the first the high half;
- float `uniform_(a, b)`: (w & 0xFFFFFF) * 2^-24 * (b - a) + a, in float32;
  double: (w64 & (2^53 - 1)) * 2^-53 * (b - a) + a;
- `normal_` of a float32 contiguous tensor of >= 16 elements (nn.Embedding's init, randn):
  every element first drawn U[0, 1), then each block of 16 turned into 16 normals by
  Box-Muller on 8 lanes: radius sqrt(-2 log(1 - u[j])), angle 2 pi u[j + 8], cos to j and
  sin to j + 8 (an unaligned tail: its last 16 drawn again and transformed). PyTorch's x86
  builds run this on AVX2 (normal_stub has no AVX512 kernel), with the log and sincos of
  avx_mathfun.h (Pommier's Cephes polynomials in float32); `_log256`/`_sincos256` below are
  those polynomials, operation for operation. Other tensors: one double Box-Muller per pair
  of elements, the second half cached in the generator;
- `random_(from, to)`, randint: w % range + from (two words when range >= 2^32);
- randperm(n) (the DataLoader's shuffle): Fisher-Yates from the front, z = random() % (n - i);
- exponential_(l): -1/l * log(1 - u), u double (multinomial draws p / exponential and takes
  the largest, a Gumbel-style trick, for num_samples=1 or without replacement);
- bernoulli_(p) (dropout's mask, p the keep probability): each element a double uniform < p.
  That is the path torch 2.13.0+cpu takes on this machine's Intel Xeon (its x86 wheels' older
  MKL path, one word seeding MKL's MCG31 stream on Intel CPUs only, is not reproduced; the
  reference test fails if the installed torch takes it).

Only what the book's code draws is here; each function returns arrays (semantics.py and
nn/init.py write them into tensors). Nothing imports real PyTorch; tests/test_torch_random.py
compares every stream with it, array for array.
"""
from __future__ import annotations

import math

import numpy as np

_F = np.float32
MASK24, MASK53 = (1 << 24) - 1, (1 << 53) - 1


# ----------------------------------------------------------------------------- the Mersenne Twister
def _mt_key(seed: int) -> np.ndarray:
    """MT19937's init_genrand: the 624-word state PyTorch's mt19937(seed) starts from."""
    key = np.empty(624, dtype=np.uint32)
    x = seed & 0xFFFFFFFF
    key[0] = x
    for j in range(1, 624):
        x = (1812433253 * (x ^ (x >> 30)) + j) & 0xFFFFFFFF
        key[j] = x
    return key


CHUNK = 1 << 22    # draws made and transformed this many at a time (a multiple of 16): a
                   # 128256 x 2048 embedding needs no temporaries of its size in float64


class Generator:
    """PyTorch's CPUGeneratorImpl: a Mersenne Twister and the two cached normal halves."""

    def __init__(self, seed: int = 67280421310721):
        self.manual_seed(seed)

    def manual_seed(self, seed: int) -> "Generator":
        seed = int(seed)
        if seed < 0:
            seed += 1 << 64                           # torch takes a negative seed modulo 2^64
        self.seed = seed
        self.mt = np.random.MT19937(0)
        self.mt.state = {"bit_generator": "MT19937", "state": {"key": _mt_key(seed), "pos": 624}}
        self.next_double_normal = None
        self.next_float_normal = None
        return self

    def initial_seed(self) -> int:
        return self.seed

    # ---- the raw words
    def words(self, n: int) -> np.ndarray:
        """n 32-bit words, as n calls of random() (uint64 holding 32 bits each)."""
        return self.mt.random_raw(n) if n else np.zeros(0, np.uint64)

    def words64(self, n: int) -> np.ndarray:
        """n calls of random64(): (first word << 32) | second word."""
        w = self.words(2 * n)
        return (w[0::2] << np.uint64(32)) | w[1::2]

    # ---- uniform
    def uniform_float32(self, n: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        """n float32 uniforms in [low, high), torch's float uniform_(low, high)."""
        lo, hi = _F(low), _F(high)                     # the bounds as float32, their span too
        out = np.empty(n, dtype=_F)
        for start in range(0, n, CHUNK):               # one word per element, in order
            x = (self.words(min(CHUNK, n - start)) & np.uint64(MASK24)).astype(np.float64) * 2.0 ** -24  # exact
            out[start:start + len(x)] = x * np.float64(hi - lo) + np.float64(lo)   # in double, then rounded
        return out

    def uniform_float64(self, n: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
        x = (self.words64(n) & np.uint64(MASK53)).astype(np.float64) * 2.0 ** -53
        return x * (float(high) - float(low)) + float(low)

    # ---- normal
    def normal_float32(self, n: int, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
        """torch's normal_ of a contiguous float32 tensor of n elements."""
        if n < 16:
            return self.normal_double(n, mean, std).astype(_F)
        out = self.uniform_float32(n)                  # every element drawn first
        full = n // 16 * 16
        for start in range(0, full, CHUNK):            # then each block of 16 turned into normals
            rows = out[start:min(start + CHUNK, full)].reshape(-1, 16)
            rows[...] = _normal_fill_16(rows, mean, std)
        if n % 16:
            tail = self.uniform_float32(16)            # the last 16 drawn again
            out[n - 16:] = _normal_fill_16(tail.reshape(1, 16), mean, std).reshape(-1)
        return out

    def normal_double(self, n: int, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
        """n draws of normal_distribution<double>(mean, std): Box-Muller, one half cached."""
        out = np.empty(n, dtype=np.float64)
        for i in range(n):
            if self.next_double_normal is not None:
                ret, self.next_double_normal = self.next_double_normal, None
            else:
                u1, u2 = self.uniform_float64(2)
                r = math.sqrt(-2.0 * math.log1p(-u2))
                theta = 2.0 * math.pi * u1
                self.next_double_normal = r * math.sin(theta)
                ret = r * math.cos(theta)
            out[i] = ret * std + mean
        return out

    # ---- integers
    def randint(self, n: int, low: int, high: int) -> np.ndarray:
        """n draws of random_(low, high): (word % range) + low, int64."""
        span = high - low
        w = self.words64(n) if span >= 1 << 32 else self.words(n)
        return (w % np.uint64(span)).astype(np.int64) + low

    def random_int64(self, n: int) -> np.ndarray:
        """random_() of an int64 tensor: random64() % 2^63."""
        return (self.words64(n) % np.uint64(1 << 63)).astype(np.int64)

    def randperm(self, n: int) -> np.ndarray:
        """randperm_cpu: Fisher-Yates from the front, z = random() % (n - i)."""
        r = np.arange(n, dtype=np.int64)
        if n > 1:
            w = self.words(n - 1)
            for i in range(n - 1):
                z = int(w[i]) % (n - i)
                r[i], r[z + i] = r[z + i], r[i]
        return r

    def exponential_float64(self, n: int, lambd: float = 1.0) -> np.ndarray:
        """-1/lambda * log1p(-u), u double; glibc's log1p (NumPy's differs in the last bit)."""
        u = self.uniform_float64(n)
        return (-1.0 / lambd) * np.fromiter((math.log1p(-v) for v in u), np.float64, n)

    def normal_float64(self, n: int, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
        """torch's normal_ of a contiguous float64 tensor: normal_fill<double> (glibc's log,
        cos, sin) from 16 elements on, the cached Box-Muller below."""
        if n < 16:
            return self.normal_double(n, mean, std)
        data = self.uniform_float64(n)

        def fill16(d):
            for j in range(8):
                radius = math.sqrt(-2.0 * math.log(1.0 - d[j]))
                theta = 2.0 * math.pi * d[j + 8]
                d[j], d[j + 8] = radius * math.cos(theta) * std + mean, radius * math.sin(theta) * std + mean

        for i in range(0, n - 15, 16):
            fill16(data[i:i + 16])
        if n % 16:
            data[n - 16:] = self.uniform_float64(16)
            fill16(data[n - 16:])
        return data

    # ---- bernoulli (dropout)
    def bernoulli(self, n: int, p: float) -> np.ndarray:
        """n draws of bernoulli_(p), bool: a double uniform below p, element by element."""
        return self.uniform_float64(n) < p


default_generator = Generator()
"""torch.default_generator: what torch.manual_seed seeds and every draw without generator= uses."""


# ----------------------------------------------------------------------------- avx_mathfun.h, in float32
def _bits(x):
    return x.view(np.int32)


def _fl(i):
    return i.view(_F)


def _fma(a, b, c):
    """a * b + c rounded once. PyTorch's AVX2 kernels are built by GCC with -mfma and its
    default -ffp-contract=fast, which fuses a product into the add or subtract that uses it;
    which pairs it fused was found by matching PyTorch's numbers (tests/test_torch_random.py).
    The float32 product is exact in float64; the sum is rounded twice (to float64, then
    float32), which differs from one rounding only in a tie case none of the tests meets."""
    return (a.astype(np.float64) * b + c).astype(_F)


def _log256(x):
    """log256_ps: Cephes logf on 8 lanes (x in (0, 1] here)."""
    one = _F(1.0)
    x = np.maximum(x, _fl(np.int32(0x00800000)))
    imm0 = (_bits(x) >> 23) & 0x1FF
    x = _fl((_bits(x) & np.int32(~0x7F800000)) | _bits(np.asarray(_F(0.5))))
    e = (imm0 - 0x7F).astype(_F) + one
    mask = x < _F(0.707106781186547524)
    tmp = np.where(mask, x, _F(0))
    x = x - one
    e = e - np.where(mask, one, _F(0))
    x = x + tmp
    z = x * x
    y = np.full_like(x, _F(7.0376836292E-2))
    for c in (-1.1514610310E-1, 1.1676998740E-1, -1.2420140846E-1, 1.4249322787E-1, -1.6668057665E-1,
              2.0000714765E-1, -2.4999993993E-1, 3.3333331174E-1):
        y = _fma(y, x, _F(c))
    y = y * x
    y = _fma(y, z, e * _F(-2.12194440e-4))         # GCC fuses y * z into the add that follows
    y = _fma(z, _F(-0.5), y)                       # y - z * 0.5
    x = x + y
    return _fma(e, _F(0.693359375), x)


def _sincos256(x):
    """sincos256_ps: Cephes sinf/cosf on 8 lanes, both at once."""
    sign_sin = _bits(x) & np.int32(-0x80000000)
    x = _fl(_bits(x) & np.int32(0x7FFFFFFF))
    y = x * _F(1.27323954473516)
    j = y.astype(np.int32)                         # truncation, as cvttps
    j = (j + 1) & ~1
    y = j.astype(_F)
    swap_sin = (j & 4) << 29
    poly = (j & 2) == 0
    x = _fma(y, _F(-0.78515625), x)
    x = _fma(y, _F(-2.4187564849853515625e-4), x)
    x = _fma(y, _F(-3.77489497744594108e-8), x)
    sign_cos = (~(j - 2) & 4) << 29
    sign_sin = sign_sin ^ swap_sin
    z = x * x
    yc = np.full_like(x, _F(2.443315711809948E-005))
    yc = _fma(yc, z, _F(-1.388731625493765E-003))
    yc = _fma(yc, z, _F(4.166664568298827E-002))
    yc = yc * z
    yc = _fma(yc, z, -(z * _F(0.5)))               # y * z - z * 0.5: the second product fused
    yc = yc + _F(1.0)
    ys = np.full_like(x, _F(-1.9515295891E-4))
    ys = _fma(ys, z, _F(8.3321608736E-3))
    ys = _fma(ys, z, _F(-1.6666654611E-1))
    ys = ys * z
    ys = _fma(ys, x, x)
    zero = _F(0)
    ysin2 = np.where(poly, ys, zero)
    ysin1 = np.where(poly, zero, yc)
    ys = ys - ysin2
    yc = yc - ysin1
    s = _fl(_bits(ysin1 + ysin2) ^ sign_sin)
    c = _fl(_bits(yc + ys) ^ sign_cos)
    return s, c


def _normal_fill_16(u, mean, std):
    """normal_fill_16_AVX2 on rows of 16 uniforms: (rows, 16) -> (rows, 16) normals."""
    u1 = _F(1.0) - u[:, :8]
    u2 = u[:, 8:]
    radius = np.sqrt(_F(-2.0) * _log256(u1))
    theta = _F(2.0 * math.pi) * u2
    s, c = _sincos256(theta)
    out = np.empty_like(u)
    out[:, :8] = _fma(radius * c, _F(std), _F(mean))
    out[:, 8:] = _fma(radius * s, _F(std), _F(mean))
    return out
