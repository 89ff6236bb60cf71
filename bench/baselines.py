#!/usr/bin/env python3
"""PyTorch baselines for the GPU figures of bench/METRICS.md (issue 5).

Every baseline runs on exactly the inputs METRICS.md defines, built on the GPU with `hash_fill`, a bit-exact
replica of the CUDA kernels fill_random_bf16 / fill_random_f32 (src/backend/cuda/kernels/elementwise.cu), so that
`bench/gpu.ts` (ours) and this script time the same function of the same numbers.

    python3 bench/baselines.py [--out PATH] [--only NAME[,NAME]] [--quick] [--groups 5] [--min-group-ms 50]

  --out PATH        write the results as JSON (see `write_json`); a table is always printed
  --only NAMES      comma-separated metric names or short aliases (lightning_prefill, lightning_decode,
                    attention_prefill, attention_decode, moe, slice_decode); default: all
  --quick           small sizes (N = 2^16 etc.) for a smoke run; the figures are then not the METRICS.md ones
                    (details.quick = true)
  --groups G        timing groups per variant (median taken), default 5
  --min-group-ms T  each group runs `reps` back-to-back launches, reps chosen so a group lasts >= T ms (default 50)

Method (/work/.library/device/METHOD.md): each variant's output is checked against a float64 reference (a slice of
it when the whole is too large) before it is timed; timing uses CUDA events around `reps` back-to-back calls after
warm-up, median of `groups` groups. The error reported is max|out - ref| / max|ref| over the checked slice
(details also give ||out - ref|| / ||ref||). fp32 matmuls run in full fp32 (set_float32_matmul_precision("highest"):
no TF32). Each metric runs in its own try/except: a failing baseline reports value null and its error.
Exit code 0 unless the hash self-check fails (then 3); 2 when torch cannot be imported.

Only torch and the standard library are used. The pure-Python parts (u64 splitmix64, hash_normal with fp32
rounding, slopes) import without torch.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import statistics
import struct
import sys
import time
import traceback
from fractions import Fraction

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the pure-Python parts stay usable (unit tests on a machine without torch)
    torch = None
    F = None


# ================================================================================================ pure Python
U64_MASK = (1 << 64) - 1
SM_GOLDEN = 0x9E3779B97F4A7C15
SM_MIX1 = 0xBF58476D1CE4E5B9
SM_MIX2 = 0x94D049BB133111EB


def s64(u: int) -> int:
    """The u64 bit pattern `u` as a signed int64 value (what torch.int64 stores)."""
    u &= U64_MASK
    return u - (1 << 64) if u >= (1 << 63) else u


def f32(x: float) -> float:
    """Round a Python float (double) to the nearest binary32 value (round to nearest even)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def bf16_bits_of_f32(x: float) -> int:
    """f2bf of common.cuh: round to nearest even on the fp32 bit pattern (no NaN here)."""
    u = f32_bits(x)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFFFFFF
    return u >> 16


# 1.7320508f: the decimal literal rounded once to binary32 (checked: the double 1.7320508 is 0.2 ulp(f32) from
# the f32 result, so rounding through double gives the same value as the compiler's direct rounding).
HASH_C = f32(1.7320508)


def splitmix64_py(x: int) -> int:
    x = (x + SM_GOLDEN) & U64_MASK
    x = ((x ^ (x >> 30)) * SM_MIX1) & U64_MASK
    x = ((x ^ (x >> 27)) * SM_MIX2) & U64_MASK
    return x ^ (x >> 31)


def hash_normal_py(seed: int, i: int) -> float:
    """hash_normal of elementwise.cu with every fp32 operation rounded to binary32 (exact emulation: for +, -, *, /
    of binary32 operands, double arithmetic followed by one rounding to binary32 is correctly rounded)."""
    h = splitmix64_py((seed & U64_MASK) ^ splitmix64_py(i & U64_MASK))
    u0, u1, u2, u3 = (float((h >> (16 * j)) & 0xFFFF) for j in range(4))
    s = f32(f32(f32(u0 + u1) + u2) + u3)
    return f32(f32(f32(s / 65536.0) - 2.0) * HASH_C)


def f32_round_exact(x: Fraction) -> float:
    """Exact round-to-nearest-even of a rational to binary32 (normal range; zero handled)."""
    if x == 0:
        return 0.0
    sign = -1.0 if x < 0 else 1.0
    a = abs(x)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    m = round(a * Fraction(2) ** (23 - e))  # Fraction.__round__: round half to even
    return sign * float(Fraction(m) * Fraction(2) ** (e - 23))


def fma_f32_py(a: float, b: float, c: float) -> float:
    """fmaf(a, b, c) for binary32 a, b, c: one rounding of the exact a*b + c."""
    return f32_round_exact(Fraction(a) * Fraction(b) + Fraction(c))


def fill_value_py(seed: int, i: int, scale: float, offset: float = 0.0) -> float:
    """Element i of fill_random_f32(seed, scale, offset): `offset + scale * hash_normal(seed, i)` in fp32. NVRTC
    contracts this to fmaf(scale, v, offset) by default (--fmad=true); with offset = 0 both readings agree (the
    + 0.0 only turns a -0 product into +0, as the fma does)."""
    v = hash_normal_py(seed, i)
    s, o = f32(scale), f32(offset)
    if o == 0.0:
        return f32(s * v) + 0.0
    return fma_f32_py(s, v, o)


def fma_via_round_to_odd_py(a: float, b: float, c: float) -> float:
    """The algorithm `_fill_values_t` uses for offset != 0, in pure Python (for testing it): the exact product
    p = a*b of two binary32 values fits a double; s = p + c rounded to double, its error e by TwoSum; s is moved
    one ulp toward the exact sum when e != 0 and s is even (round to odd at 53 bits); then one rounding to
    binary32, which is then correct (53 >= 24 + 2)."""
    p = a * b
    s = p + c
    bb = s - p
    e = (p - (s - bb)) + (c - bb)
    if e != 0.0 and (struct.unpack("<Q", struct.pack("<d", s))[0] & 1) == 0:
        s = math.nextafter(s, math.inf if e > 0 else -math.inf)
    return f32(s)


def alibi_base(H: int) -> list:
    """src/model/slopes.ts alibiBase: float64 ALiBi slopes."""

    def pow2(n: int) -> list:
        start = 2 ** -(2 ** -(math.log2(n) - 3))
        return [start * start**i for i in range(n)]

    if float(math.log2(H)).is_integer():
        return pow2(H)
    c = 2 ** math.floor(math.log2(H))
    return pow2(c) + alibi_base(2 * c)[0::2][: H - c]


def lightning_slopes(H: int, layer: int, num_layers: int) -> list:
    """src/model/slopes.ts lightningSlopes: fp32(fp32(base_h) * fp32(1 - l/(L-1) + 1e-5))."""
    factor = f32(1 - (layer / (num_layers - 1) if num_layers > 1 else 0) + 1e-5)
    return [f32(f32(b) * factor) for b in alibi_base(H)]


# ================================================================================================ torch: the hash
_SM_GOLDEN_S = s64(SM_GOLDEN)
_SM_MIX1_S = s64(SM_MIX1)
_SM_MIX2_S = s64(SM_MIX2)


def _srl(x, k: int):
    """Logical right shift of int64 tensors holding u64 bit patterns (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64_t(x):
    """splitmix64 on an int64 tensor of u64 bit patterns; int64 + and * wrap modulo 2^64 (two's complement), which
    is u64 arithmetic on the same bits. Checked against splitmix64_py at start (hash_self_check)."""
    x = x + _SM_GOLDEN_S
    x = (x ^ _srl(x, 30)) * _SM_MIX1_S
    x = (x ^ _srl(x, 27)) * _SM_MIX2_S
    return x ^ _srl(x, 31)


def hash_normal_t(idx, seed: int):
    """hash_normal(seed, idx) as fp32, idx an int64 tensor of element indices."""
    h = splitmix64_t(splitmix64_t(idx) ^ s64(seed))
    u0 = (h & 0xFFFF).to(torch.float32)
    u1 = ((h >> 16) & 0xFFFF).to(torch.float32)  # the mask removes the sign-extended bits
    u2 = ((h >> 32) & 0xFFFF).to(torch.float32)
    u3 = ((h >> 48) & 0xFFFF).to(torch.float32)
    del h
    s = ((u0 + u1) + u2) + u3  # < 2^18: exact in fp32
    return (s * (1.0 / 65536.0) - 2.0) * HASH_C  # *2^-16 and -2 exact; one fp32 rounding in the last product


def _fill_values_t(idx, seed: int, scale: float, offset: float):
    """fp32 values of fill_random at the indices idx (see fill_value_py)."""
    v = hash_normal_t(idx, seed)
    sc, of = f32(scale), f32(offset)
    if of == 0.0:
        return v * sc + 0.0  # fp32 product with an exactly representable fp32 scalar: one correct rounding
    # exact fmaf(scale, v, offset): see fma_via_round_to_odd_py
    p = v.to(torch.float64) * sc
    s = p + of
    bb = s - p
    e = (p - (s - bb)) + (of - bb)
    even = (s.view(torch.int64) & 1) == 0
    toward = torch.where(e > 0, torch.full_like(s, math.inf), torch.full_like(s, -math.inf))
    s = torch.where((e != 0) & even, torch.nextafter(s, toward), s)
    return s.to(torch.float32)


def hash_fill(shape, seed: int, scale: float, offset: float = 0.0, dtype=None, device="cuda", chunk: int = 1 << 24):
    """A tensor equal, bit for bit, to what fill_random_bf16 / fill_random_f32 write: element i (row-major linear
    index) = offset + scale * hash_normal(seed, i) in fp32, rounded to bf16 (nearest even) for bf16 tensors.
    Generated `chunk` elements at a time so the int64 temporaries stay small."""
    if dtype is None:
        dtype = torch.bfloat16
    n = 1
    for d in shape:
        n *= int(d)
    out = torch.empty(n, dtype=dtype, device=device)
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        idx = torch.arange(start, end, dtype=torch.int64, device=device)
        out[start:end].copy_(_fill_values_t(idx, seed, scale, offset))  # fp32 -> bf16: round to nearest even
        del idx
    return out.view(*[int(d) for d in shape])


def hash_self_check(device) -> dict:
    """Compare the torch hash with the pure-Python u64 implementation, bit for bit (fp32 and bf16 patterns), on
    the device that generates the inputs. Raises AssertionError on any difference."""
    # known answers: the SplitMix64 generator seeded with 0 starts 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4,
    # 0x06c45d188009454f, and its k-th output is splitmix64(k * golden) in the form used here
    assert splitmix64_py(0) == 0xE220A8397B1DCDAF, "splitmix64_py known answer 0"
    assert splitmix64_py(SM_GOLDEN) == 0x6E789E6AA1B965F4, "splitmix64_py known answer 1"
    assert splitmix64_py((2 * SM_GOLDEN) & U64_MASK) == 0x06C45D188009454F, "splitmix64_py known answer 2"
    rng = random.Random(12345)
    idx = list(range(64)) + [
        255, 256, 65535, 65536, (1 << 24) - 1, 1 << 24,
        (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 32) + 5,
        (1 << 20) * 3072 - 1, 32 * 18432 * 6144 - 1, (1 << 40) + 123, (1 << 62) + 1, (1 << 63) - 1,
    ] + [rng.randrange(0, 1 << 34) for _ in range(256)]
    it = torch.tensor(idx, dtype=torch.int64, device=device)
    got_sm = [v & U64_MASK for v in splitmix64_t(it).cpu().tolist()]
    want_sm = [splitmix64_py(i) for i in idx]
    bad = [(i, hex(g), hex(w)) for i, g, w in zip(idx, got_sm, want_sm) if g != w]
    assert not bad, f"splitmix64 torch != python at {bad[:4]}"
    n_checked = len(idx)
    for seed, scale, offset in [(101, 0.1, 0.0), (103, 0.01, 0.0), (111, 0.02, 0.0), (1, 1.0, 0.0),
                                (7, 0.05, 1.0), ((1 << 63) + 12345, 1 / math.sqrt(6144), 0.0), (5, 0.5, -0.25)]:
        vals = _fill_values_t(it, seed, scale, offset)
        got32 = [b & 0xFFFFFFFF for b in vals.view(torch.int32).cpu().tolist()]
        gotbf = [b & 0xFFFF for b in vals.to(torch.bfloat16).view(torch.int16).cpu().tolist()]
        for j, i in enumerate(idx):
            w = fill_value_py(seed, i, scale, offset)
            if got32[j] != f32_bits(w) or gotbf[j] != bf16_bits_of_f32(w):
                raise AssertionError(
                    f"hash mismatch seed={seed} scale={scale} offset={offset} i={i}: torch f32 {got32[j]:#010x} "
                    f"bf16 {gotbf[j]:#06x}, python f32 {f32_bits(w):#010x} bf16 {bf16_bits_of_f32(w):#06x}")
        n_checked += len(idx)
    # the chunked tensor path (row-major index, chunk boundaries), tiny chunks
    t = hash_fill([3, 5, 7], 42, 0.3, dtype=torch.bfloat16, device=device, chunk=16)
    tb = [b & 0xFFFF for b in t.reshape(-1).view(torch.int16).cpu().tolist()]
    assert tb == [bf16_bits_of_f32(fill_value_py(42, i, 0.3)) for i in range(105)], "hash_fill bf16 (chunked)"
    t = hash_fill([4, 9], 43, 2.0, dtype=torch.float32, device=device, chunk=5)
    tb = [b & 0xFFFFFFFF for b in t.reshape(-1).view(torch.int32).cpu().tolist()]
    assert tb == [f32_bits(fill_value_py(43, i, 2.0)) for i in range(36)], "hash_fill f32 (chunked)"
    return {"ok": True, "values_checked": n_checked + 105 + 36, "device": str(device)}


# ================================================================================================ torch: helpers
def sync():
    torch.cuda.synchronize()


def bench(fn, groups: int = 5, min_group_ms: float = 50.0, warmup: int = 2, max_reps: int = 100000) -> dict:
    """CUDA-event timing: warm-up, then `groups` groups of `reps` back-to-back calls (reps so that a group lasts
    >= min_group_ms), median of the per-call times of the groups."""
    for _ in range(warmup):
        fn()
    sync()
    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    n = 1
    while True:
        st.record()
        for _ in range(n):
            fn()
        en.record()
        en.synchronize()
        t = st.elapsed_time(en)
        if t >= min(5.0, min_group_ms) or n >= max_reps:
            break
        n = min(max_reps, n * 4)
    per = max(t / n, 1e-4)
    reps = int(min(max_reps, max(1, math.ceil(min_group_ms / per))))
    times = []
    for _ in range(groups):
        sync()
        st.record()
        for _ in range(reps):
            fn()
        en.record()
        en.synchronize()
        times.append(st.elapsed_time(en) / reps)
    med = statistics.median(times)
    return {"ms": med, "reps": reps, "groups_ms": times, "spread": (max(times) - min(times)) / med if med > 0 else None}


def rel_err(out, ref) -> dict:
    """max|out - ref| / max|ref| and ||out - ref|| / ||ref|| in float64 (out of any dtype)."""
    o = out.to(torch.float64)
    r = ref.to(torch.float64)
    if not bool(torch.isfinite(o).all()):
        return {"max_rel": math.inf, "fro_rel": math.inf, "nonfinite": int((~torch.isfinite(o)).sum())}
    d = o - r
    return {"max_rel": float(d.abs().max() / r.abs().max()), "fro_rel": float(d.norm() / r.norm())}


_BMM_MODE = {"mode": None}
_BMM_MODES = ("out_dtype", "out_dtype_contiguous", "bf16_widened")


def _bmm_by(mode, a, b):
    if mode == "out_dtype":
        return torch.bmm(a, b, out_dtype=torch.float32)
    if mode == "out_dtype_contiguous":
        return torch.bmm(a.contiguous(), b.contiguous(), out_dtype=torch.float32)
    return torch.bmm(a, b).float()


def bmm_f32(a, b):
    """bf16 batched matmul with fp32 accumulation and an fp32 result: torch.bmm(..., out_dtype=float32) where this
    torch has it (2.8+; on contiguous copies if it rejects strided views), else torch.bmm in bf16 (fp32
    accumulation, bf16 result) widened. The first call (a check run, never a timed one) settles which."""
    mode = _BMM_MODE["mode"]
    if mode is not None:
        return _bmm_by(mode, a, b)
    for m in _BMM_MODES:
        try:
            r = _bmm_by(m, a, b)
        except Exception:  # noqa: BLE001 - try the next form; the last one raises for real
            if m == _BMM_MODES[-1]:
                raise
            continue
        _BMM_MODE["mode"] = m
        return r


def free():
    gc.collect()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def tb_per_s(nbytes: float, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e12


def tflop_per_s(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


# ================================================================================================ lightning
def lightning_tables(slopes: list, C: int, device) -> dict:
    """fp32 decays exp(-(s*n)) with the fp32 product first (what REMOTE and our kernels compute)."""
    s = torch.tensor(slopes, dtype=torch.float32, device=device)
    H = s.numel()
    n = torch.arange(C, dtype=torch.float32, device=device)
    qd = torch.exp(-(s[:, None] * (n + 1.0)[None, :]))  # q_decay[i] = e^(-s(i+1))
    kd = torch.exp(-(s[:, None] * ((C - 1.0) - n)[None, :]))  # k_decay[j] = e^(-s(C-1-j))
    diff = n[:, None] - n[None, :]
    diag = torch.exp(-(s[:, None, None] * diff.clamp(min=0.0)[None])) * (diff >= 0).to(torch.float32)[None]
    bd = torch.exp(-(s * float(C)))
    return {"s": s, "H": H, "C": C, "qd": qd, "kd": kd, "diag": diag, "bd": bd}


def lightning_loop(q, k, v, tb: dict, out):
    """The transformers / REMOTE form: a Python loop over blocks of C tokens, all heads batched per block.
    q, k, v: [N, H, Dh] bf16 views into the packed qkv; out: bf16 [N, H*Dh] (written); returns the final fp32 state.
    Per block (m rows): scores = Q Kᵀ (bf16 matmul, fp32 accumulation, bf16 result, as REMOTE);
    P = bf16(fp32(scores) * diag) and intra = P V (bf16 operands, fp32 accumulation and result — the precision of
    our tensor-core path); inter = (Q * q_decay) S in full fp32; out = bf16(inter + intra);
    S = e^(-s m) S + fp32(bf16(bf16(K * k_decay)ᵀ V)) (REMOTE's rounding points)."""
    N, H, Dh = q.shape
    C = tb["C"]
    s = tb["s"]
    qd3, kd3, diag, bd3 = tb["qd"][:, :, None], tb["kd"][:, :, None], tb["diag"], tb["bd"].view(H, 1, 1)
    S = torch.zeros(H, Dh, Dh, dtype=torch.float32, device=q.device)
    outv = out.view(N, H, Dh)
    for a in range(0, N, C):
        m = min(C, N - a)
        Q = q[a:a + m].transpose(0, 1)  # [H, m, Dh], strided views
        K = k[a:a + m].transpose(0, 1)
        V = v[a:a + m].transpose(0, 1)
        if m == C:
            qd_m, kd_m, dg, bdm = qd3, kd3, diag, bd3
        else:
            qd_m, kd_m, dg = qd3[:, :m], kd3[:, C - m:], diag[:, :m, :m]
            bdm = torch.exp(-(s * float(m))).view(H, 1, 1)
        scores = torch.matmul(Q, K.transpose(1, 2))
        P = (scores.float() * dg).to(torch.bfloat16)
        o = bmm_f32(P, V)
        o.add_(torch.matmul(Q.float() * qd_m, S))
        outv[a:a + m].copy_(o.transpose(0, 1))
        kv = torch.matmul((K.float() * kd_m).to(torch.bfloat16).transpose(1, 2), V)
        S = torch.addcmul(kv.float(), S, bdm)  # kv + S * e^(-s m)
    return S


def _segment_len(n: int) -> int:
    best = 1
    for d in range(1, n + 1):
        if n % d == 0 and abs(d - math.sqrt(n)) < abs(best - math.sqrt(n)):
            best = d
    return best


def _scan_inplace(X, s, C: int):
    """X [nC, H, Dh, Dh] fp32 holds per-block kv; afterwards X[b] = sum_{c<=b} e^(-s C (b-c)) kv[c] (the state
    after block b from a zero start). Two-level: a sequential scan inside segments of L blocks (all segments at
    once, L ~ sqrt(nC) launches), a sequential scan of the A = nC/L segment carries, one broadcast fix-up. Decays are
    fp32 exp(-(s * distance)) of the true token distance (underflow to 0 is harmless)."""
    nC, H = X.shape[0], X.shape[1]
    L = _segment_len(nC)
    A = nC // L
    Y = X.view(A, L, *X.shape[1:])
    bd4 = torch.exp(-(s * float(C))).view(1, H, 1, 1)
    for j in range(1, L):
        Y[:, j].addcmul_(Y[:, j - 1], bd4)  # Y[:, j] += e^(-sC) Y[:, j-1]
    if A > 1:
        bdL = torch.exp(-(s * float(C * L))).view(H, 1, 1)
        carry = Y[:, L - 1].clone()  # [A, H, Dh, Dh]: after the loop, the global state at the end of segment a
        for a in range(1, A):
            carry[a].addcmul_(carry[a - 1], bdL)
        dist = torch.arange(1, L + 1, dtype=torch.float32, device=X.device) * float(C)  # C (j+1), exact
        pw = torch.exp(-(s[None, :] * dist[:, None]))  # [L, H]
        Y[1:].addcmul_(pw.view(1, L, H, 1, 1), carry[:-1].unsqueeze(1))  # Y[a, j] += e^(-sC(j+1)) carry[a-1]


def lightning_batched(q, k, v, tb: dict, out, group: int = 256):
    """Chunk-parallel form of the same math: per-block kvᵢ = bf16(bf16(K*k_decay)ᵀ V) for all blocks at once (in
    groups of `group` blocks), a scan over blocks for the entering states, then intra and inter terms for all
    blocks at once, with the rounding points of `lightning_loop`. Needs N % C == 0."""
    N, H, Dh = q.shape
    C = tb["C"]
    if N % C:
        raise ValueError("lightning_batched needs N % C == 0")
    nC = N // C
    G = min(group, nC)
    qd4 = tb["qd"].view(1, H, C, 1)
    kd4 = tb["kd"].view(1, H, C, 1)
    diag4 = tb["diag"].view(1, H, C, C)
    buf = torch.empty(nC + 1, H, Dh, Dh, dtype=torch.float32, device=q.device)  # buf[b] = state entering block b
    buf[0].zero_()

    def blocks(x, g0, g1):  # [n, H, C, Dh] contiguous copy of blocks g0..g1-1
        return x[g0 * C:g1 * C].view(g1 - g0, C, H, Dh).permute(0, 2, 1, 3).contiguous()

    for g0 in range(0, nC, G):
        g1 = min(nC, g0 + G)
        K, V = blocks(k, g0, g1), blocks(v, g0, g1)
        kv = torch.matmul((K.float() * kd4).to(torch.bfloat16).transpose(-1, -2), V)  # bf16 [n, H, Dh, Dh]
        buf[1 + g0:1 + g1].copy_(kv)
        del K, V, kv
    _scan_inplace(buf[1:], tb["s"], C)
    outv = out.view(nC, C, H, Dh)
    for g0 in range(0, nC, G):
        g1 = min(nC, g0 + G)
        n = g1 - g0
        Q, K, V = blocks(q, g0, g1), blocks(k, g0, g1), blocks(v, g0, g1)
        scores = torch.matmul(Q, K.transpose(-1, -2))  # bf16 [n, H, C, C]
        P = (scores.float() * diag4).to(torch.bfloat16)
        del scores
        o = bmm_f32(P.view(n * H, C, C), V.view(n * H, C, Dh)).view(n, H, C, Dh)
        del P
        o.add_(torch.matmul(Q.float() * qd4, buf[g0:g1]))
        outv[g0:g1].copy_(o.permute(0, 2, 1, 3))
        del Q, K, V, o
    return buf[nC]


def lightning_ref64(q, k, v, slopes: list):
    """Float64 reference of the exact recurrence (MODEL.md §8.4) in its closed form:
    o_t = sum_{j<=t} e^(-s(t-j)) (q_t·k_j) v_j, S_final = sum_j e^(-s(P-1-j)) k_jᵀ v_j. Returns out [P, H*Dh] and
    the final state [H, Dh, Dh]."""
    P, H, Dh = q.shape
    q64, k64, v64 = (x.to(torch.float64).transpose(0, 1) for x in (q, k, v))  # [H, P, Dh]
    s = torch.tensor(slopes, dtype=torch.float64, device=q.device).view(H, 1, 1)
    t = torch.arange(P, dtype=torch.float64, device=q.device)
    d = t[:, None] - t[None, :]
    W = torch.exp(-s * d.clamp(min=0.0)[None]) * (d >= 0).to(torch.float64)[None]
    o = torch.matmul(torch.matmul(q64, k64.transpose(1, 2)) * W, v64)
    del W
    w_last = torch.exp(-s * (P - 1.0 - t)[None, :, None])  # [H, P, 1]
    S = torch.matmul((k64 * w_last).transpose(1, 2), v64)
    return o.transpose(0, 1).reshape(P, H * Dh), S


def lightning_recurrence64(q, k, v, slopes: list, T: int):
    """Float64 token recurrence S_t = e^(-s) S_(t-1) + k_tᵀ v_t, o_t = q_t S_t on the first T tokens (a cross-check
    of the closed form)."""
    _, H, Dh = q.shape
    dec = torch.exp(-torch.tensor(slopes, dtype=torch.float64, device=q.device)).view(H, 1, 1)
    S = torch.zeros(H, Dh, Dh, dtype=torch.float64, device=q.device)
    outs = []
    for t in range(T):
        qt, kt, vt = (x[t].to(torch.float64) for x in (q, k, v))  # [H, Dh]
        S = dec * S + kt[:, :, None] * vt[:, None, :]
        outs.append(torch.matmul(qt[:, None, :], S)[:, 0, :])
    return torch.stack(outs).reshape(T, H * Dh), S


def run_lightning_prefill(cfg) -> dict:
    N, H, Dh, C = cfg["lp_n"], 8, 128, 256
    dev = cfg["device"]
    slopes = lightning_slopes(H, 0, 80)
    details = {"N": N, "H": H, "Dh": Dh, "block": C, "qkv": "bf16 [N, H*3*Dh] seed 101 scale 0.1",
               "slopes": slopes, "quick": cfg["quick"], "state_start": "zeros"}
    qkv = hash_fill([N, H * 3 * Dh], 101, 0.1, dtype=torch.bfloat16, device=dev)
    qkv4 = qkv.view(N, H, 3, Dh)
    q, k, v = qkv4[:, :, 0], qkv4[:, :, 1], qkv4[:, :, 2]  # views, [N, H, Dh]
    tb = lightning_tables(slopes, C, dev)
    group = cfg["lp_group"]
    variants = {
        "loop": lambda qq, kk, vv, oo: lightning_loop(qq, kk, vv, tb, oo),
        "batched": lambda qq, kk, vv, oo: lightning_batched(qq, kk, vv, tb, oo, group=group),
    }
    # correctness on a prefix, float64
    Pn = min(cfg["lp_check"], N)
    o_ref, S_ref = lightning_ref64(q[:Pn], k[:Pn], v[:Pn], slopes)
    Tr = min(256, Pn)
    o_rec, S_rec = lightning_recurrence64(q[:Tr], k[:Tr], v[:Tr], slopes, Tr)
    o_cf, S_cf = lightning_ref64(q[:Tr], k[:Tr], v[:Tr], slopes)
    details["ref_closed_form_vs_recurrence_first_%d" % Tr] = {"out": rel_err(o_cf, o_rec), "state": rel_err(S_cf, S_rec)}
    del o_rec, S_rec, o_cf, S_cf
    checks = {}
    for name, fn in variants.items():
        o = torch.full((Pn, H * Dh), float("nan"), dtype=torch.bfloat16, device=dev)  # poisoned
        S = fn(q[:Pn], k[:Pn], v[:Pn], o)
        sync()
        checks[name] = {"prefix_tokens": Pn, "out": rel_err(o, o_ref), "final_state": rel_err(S, S_ref)}
        del o, S
    details["pv_matmul"] = {"out_dtype": "torch.bmm(P, V, out_dtype=float32)",
                            "out_dtype_contiguous": "torch.bmm(P, V.contiguous(), out_dtype=float32)",
                            "bf16_widened": "torch.bmm(P, V) bf16 result, widened (no out_dtype in this torch)"}.get(
                                _BMM_MODE["mode"], _BMM_MODE["mode"])
    del o_ref, S_ref
    free()
    # full size: both variants, same output buffer
    out = torch.empty(N, H * Dh, dtype=torch.bfloat16, device=dev)
    finals = {}
    timings = {}
    for name, fn in variants.items():
        out.fill_(float("nan"))
        S_full = fn(q, k, v, out)
        finals[name] = (S_full.clone(), out.clone())  # clone: the batched state is a view into its 2 GB buffer
        del S_full
        sync()
        if not bool(torch.isfinite(finals[name][1]).all()):
            raise RuntimeError(f"{name}: non-finite or unwritten output at full size")
        timings[name] = bench(lambda: fn(q, k, v, out), groups=cfg["groups"], min_group_ms=cfg["min_group_ms"], warmup=1)
        free()
    details["loop_vs_batched_full_size"] = {"out": rel_err(finals["batched"][1], finals["loop"][1]),
                                            "final_state": rel_err(finals["batched"][0], finals["loop"][0])}
    del finals
    details["variants"] = {n: {"ms": timings[n]["ms"], "timing": timings[n], "check": checks[n]} for n in variants}
    best = min(variants, key=lambda n: timings[n]["ms"])
    details["best_variant"] = best
    return {
        "metric": "lightning_prefill_ms_h8_d128_n1m",
        "baseline": f"torch chunked lightning, {best} (bf16 QKᵀ/PV/KᵀV matmuls with fp32 accumulation, fp32 inter and state)",
        "value": timings[best]["ms"],
        "unit": "ms",
        "check_rel_err": max(checks[best]["out"]["max_rel"], checks[best]["final_state"]["max_rel"]),
        "details": details,
    }


def run_lightning_decode(cfg) -> dict:
    B, H, Dh = cfg["ld_b"], 64, 128
    dev = cfg["device"]
    slopes = lightning_slopes(H, 0, 80)
    qkv = hash_fill([B, H * 3 * Dh], 102, 0.1, dtype=torch.bfloat16, device=dev)
    states = hash_fill([B, H, Dh, Dh], 103, 0.01, dtype=torch.float32, device=dev)
    init = states.clone()
    qkv4 = qkv.view(B, H, 3, Dh)
    q, k, v = qkv4[:, :, 0], qkv4[:, :, 1], qkv4[:, :, 2]
    s = torch.tensor(slopes, dtype=torch.float32, device=dev)
    dec4 = torch.exp(-s).view(1, H, 1, 1)  # e^(-s) in fp32
    out = torch.empty(B, H * Dh, dtype=torch.bfloat16, device=dev)
    S3 = states.view(B * H, Dh, Dh)

    def step_baddbmm():
        states.mul_(dec4)
        S3.baddbmm_(k.float().reshape(B * H, Dh, 1), v.float().reshape(B * H, 1, Dh))  # += k v (outer, fp32)
        o = torch.bmm(q.float().reshape(B * H, 1, Dh), S3)  # o = q S (fp32)
        out.copy_(o.view(B, H * Dh))

    def step_addcmul():
        states.mul_(dec4).addcmul_(k.float()[:, :, :, None], v.float()[:, :, None, :])
        o = torch.bmm(q.float().reshape(B * H, 1, Dh), S3)
        out.copy_(o.view(B, H * Dh))

    variants = {"mul_+baddbmm_": step_baddbmm, "mul_+addcmul_": step_addcmul}
    # float64 reference of one step from the initial states
    S64 = init.to(torch.float64)
    S64.mul_(torch.exp(-s.to(torch.float64)).view(1, H, 1, 1))
    S64.add_(k.to(torch.float64)[:, :, :, None] * v.to(torch.float64)[:, :, None, :])
    o64 = torch.matmul(q.to(torch.float64)[:, :, None, :], S64)[:, :, 0, :].reshape(B, H * Dh)
    checks, timings = {}, {}
    for name, fn in variants.items():
        states.copy_(init)
        out.fill_(float("nan"))
        fn()
        sync()
        checks[name] = {"out": rel_err(out, o64), "state": rel_err(states, S64)}
        timings[name] = bench(fn, groups=cfg["groups"], min_group_ms=cfg["min_group_ms"])
    del S64, o64
    nbytes = 2 * B * H * Dh * Dh * 4 + B * H * 3 * Dh * 2 + B * H * Dh * 2
    best = min(variants, key=lambda n: timings[n]["ms"])
    return {
        "metric": "lightning_decode_tbps_h64_b256",
        "baseline": f"torch eager decode step ({best}, fp32 state in place, o = q·S fp32 bmm)",
        "value": tb_per_s(nbytes, timings[best]["ms"]),
        "unit": "TB/s",
        "check_rel_err": max(checks[best]["out"]["max_rel"], checks[best]["state"]["max_rel"]),
        "details": {"B": B, "H": H, "Dh": Dh, "bytes": nbytes, "quick": cfg["quick"],
                    "inputs": "qkv bf16 seed 102 scale 0.1; states fp32 [B,H,Dh,Dh] seed 103 scale 0.01",
                    "best_variant": best,
                    "variants": {n: {"ms": timings[n]["ms"], "tbps": tb_per_s(nbytes, timings[n]["ms"]),
                                     "timing": timings[n], "check": checks[n]} for n in variants},
                    "note": "mul_ and the outer-product add are separate passes over the state, and o = q·S reads it "
                            "again: 5 state-sized transfers against the 2 of the byte count"},
    }


# ================================================================================================ softmax attention
def _sdpa_ctx(backend_name):
    """A context manager restricting SDPA to one backend (None: no restriction)."""
    import contextlib

    if backend_name is None:
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([getattr(SDPBackend, backend_name)])
    except ImportError:  # torch < 2.3
        flags = {"FLASH_ATTENTION": "enable_flash", "EFFICIENT_ATTENTION": "enable_mem_efficient", "MATH": "enable_math"}
        kw = {f: False for f in flags.values()}
        if backend_name not in flags:
            raise RuntimeError(f"{backend_name} not selectable in this torch")
        kw[flags[backend_name]] = True
        return torch.backends.cuda.sdp_kernel(**kw)


_SDP_NAMES = {-1: "ERROR", 0: "MATH", 1: "FLASH_ATTENTION", 2: "EFFICIENT_ATTENTION", 3: "CUDNN_ATTENTION", 4: "OVERRIDEABLE"}


def _sdpa_default_choice(Q, K, V, is_causal, scale):
    try:
        c = int(torch._fused_sdp_choice(Q, K, V, None, 0.0, is_causal, scale=scale, enable_gqa=True))
        return _SDP_NAMES.get(c, str(c))
    except Exception as e:  # noqa: BLE001
        return f"unknown ({type(e).__name__}: {e})"[:200]


def _top_kernels(fn, k=3):
    """Names of the kernels one call launches (the profiler), longest first."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            sync()
        rows = []
        for e in prof.key_averages():
            t = getattr(e, "self_device_time_total", None)
            if t is None:
                t = getattr(e, "self_cuda_time_total", 0)
            if t and t > 0:
                rows.append((float(t), e.key))
        rows.sort(reverse=True)
        return [name[:160] for _, name in rows[:k]]
    except Exception as e:  # noqa: BLE001
        return [f"profiler failed: {type(e).__name__}: {e}"[:200]]


def attention_ref_rows(q, k, v, rows, scale, causal=True):
    """Float64 reference of GQA softmax attention for query rows `rows` (query head h uses kv head h // (H/Hkv),
    as enable_gqa / repeat_interleave). q [Nq, H, Dh], k/v [N, Hkv, Dh]; returns [len(rows), H, Dh]."""
    H, Hkv = q.shape[1], k.shape[1]
    rep = H // Hkv
    res = []
    for i in rows:
        n = (i + 1) if causal else k.shape[0]
        heads = []
        for g in range(Hkv):
            Qg = q[i, g * rep:(g + 1) * rep].to(torch.float64)
            Kg = k[:n, g].to(torch.float64)
            Vg = v[:n, g].to(torch.float64)
            p = torch.softmax(torch.matmul(Qg, Kg.T) * scale, dim=-1)
            heads.append(torch.matmul(p, Vg))
            del Kg, Vg, p
        res.append(torch.cat(heads, 0))
    return torch.stack(res)


def _run_sdpa_variants(call, backends, ref, pick, cfg):
    variants = {}
    for name, backend in backends:
        try:
            with _sdpa_ctx(backend):
                o = call()
                sync()
                chk = rel_err(pick(o), ref)
                del o
                if not math.isfinite(chk["max_rel"]):
                    raise RuntimeError(f"non-finite output: {chk}")
                t = bench(call, groups=cfg["groups"], min_group_ms=cfg["min_group_ms"])
                kern = _top_kernels(call)
            variants[name] = {"ms": t["ms"], "timing": t, "check": chk, "kernels": kern}
        except Exception as e:  # noqa: BLE001
            variants[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        free()
    return variants


def run_attention_prefill(cfg) -> dict:
    N, H, Hkv, Dh = cfg["ap_n"], 64, 8, 128
    dev = cfg["device"]
    scale = 1.0 / math.sqrt(Dh)
    q = hash_fill([N, H, Dh], 104, 1.0, dtype=torch.bfloat16, device=dev)
    k = hash_fill([N, Hkv, Dh], 105, 1.0, dtype=torch.bfloat16, device=dev)
    v = hash_fill([N, Hkv, Dh], 106, 1.0, dtype=torch.bfloat16, device=dev)
    Q = q.view(1, N, H, Dh).transpose(1, 2)  # [1, H, N, Dh] views (no copies)
    K = k.view(1, N, Hkv, Dh).transpose(1, 2)
    V = v.view(1, N, Hkv, Dh).transpose(1, 2)

    def call():
        return F.scaled_dot_product_attention(Q, K, V, is_causal=True, scale=scale, enable_gqa=True)

    rows = sorted({0, 1, min(127, N - 1), min(1000, N - 1), N // 2, N - 1})
    ref = attention_ref_rows(q, k, v, rows, scale, causal=True)
    backends = [("default", None), ("cudnn", "CUDNN_ATTENTION"), ("flash", "FLASH_ATTENTION"),
                ("efficient", "EFFICIENT_ATTENTION")]
    variants = _run_sdpa_variants(call, backends, ref, lambda o: o[0][:, rows, :].permute(1, 0, 2), cfg)
    flops = 2.0 * N * N * Dh * H
    for r in variants.values():
        if "ms" in r:
            r["tflops"] = tflop_per_s(flops, r["ms"])
    details = {"N": N, "H": H, "Hkv": Hkv, "Dh": Dh, "scale": scale, "flops": flops, "quick": cfg["quick"],
               "checked_rows": rows, "default_backend_choice": _sdpa_default_choice(Q, K, V, True, scale),
               "variants": variants, "skipped": {"math": "materialises N x N scores per head"},
               "layout": "q/k/v are [1, H, N, Dh] transpose views of [N, H, Dh] tensors"}
    return _best_sdpa_result("attention_prefill_tflops_h64_kv8_d128_n16k", "TFLOP/s", "tflops", ", is_causal, enable_gqa",
                             variants, details)


def run_attention_decode(cfg) -> dict:
    N, H, Hkv, Dh = cfg["ad_n"], 64, 8, 128
    dev = cfg["device"]
    scale = 1.0 / math.sqrt(Dh)
    q = hash_fill([1, H, Dh], 107, 1.0, dtype=torch.bfloat16, device=dev)
    k = hash_fill([N, Hkv, Dh], 108, 1.0, dtype=torch.bfloat16, device=dev)
    v = hash_fill([N, Hkv, Dh], 109, 1.0, dtype=torch.bfloat16, device=dev)
    Q = q.view(1, H, 1, Dh)
    K = k.view(1, N, Hkv, Dh).transpose(1, 2)  # [1, Hkv, N, Dh] views
    V = v.view(1, N, Hkv, Dh).transpose(1, 2)

    def call():
        return F.scaled_dot_product_attention(Q, K, V, is_causal=False, scale=scale, enable_gqa=True)

    ref = attention_ref_rows(q.view(1, H, Dh), k, v, [0], scale, causal=False)  # [1, H, Dh]
    backends = [("default", None), ("flash", "FLASH_ATTENTION"), ("cudnn", "CUDNN_ATTENTION"),
                ("efficient", "EFFICIENT_ATTENTION"), ("math", "MATH")]
    variants = _run_sdpa_variants(call, backends, ref, lambda o: o[0, :, 0, :][None], cfg)
    nbytes = 2.0 * N * Hkv * Dh * 2
    for r in variants.values():
        if "ms" in r:
            r["tbps"] = tb_per_s(nbytes, r["ms"])
    details = {"N": N, "H": H, "Hkv": Hkv, "Dh": Dh, "bytes": nbytes, "quick": cfg["quick"],
               "default_backend_choice": _sdpa_default_choice(Q, K, V, False, scale), "variants": variants,
               "layout": "q [1, H, 1, Dh]; k/v [1, Hkv, N, Dh] transpose views of [N, Hkv, Dh]; enable_gqa (no "
                         "repeat_interleave copy outside the op)"}
    return _best_sdpa_result("attention_decode_tbps_n1m", "TB/s", "tbps", ", enable_gqa", variants, details)


def _best_sdpa_result(metric: str, unit: str, key: str, suffix: str, variants: dict, details: dict) -> dict:
    """The fastest SDPA variant that ran (its figure under `key`) as the metric's baseline, or a null result."""
    ok = [n for n in variants if "ms" in variants[n]]
    if not ok:
        return {"metric": metric, "baseline": "sdpa", "value": None, "unit": unit, "check_rel_err": None,
                "details": details, "reason": "no SDPA backend ran"}
    best = min(ok, key=lambda n: variants[n]["ms"])
    details["best_variant"] = best
    return {
        "metric": metric,
        "baseline": f"sdpa {best}" + (f" ({details['default_backend_choice']})" if best == "default" else "") + suffix,
        "value": variants[best][key],
        "unit": unit,
        "check_rel_err": variants[best]["check"]["max_rel"],
        "details": details,
    }


# ================================================================================================ MoE experts
def _grouped_mm_fn():
    f = getattr(torch, "_grouped_mm", None)
    if f is not None:
        return "torch._grouped_mm", f
    f = getattr(F, "grouped_mm", None)
    if f is not None:
        return "torch.nn.functional.grouped_mm", f
    return None, None


def run_moe(cfg) -> dict:
    E, D, I, T, Kk = cfg["moe_e"], cfg["moe_d"], cfg["moe_i"], cfg["moe_t"], 2
    dev = cfg["device"]
    x = hash_fill([T, D], 110, 1.0, dtype=torch.bfloat16, device=dev)
    w13 = hash_fill([E, 2 * I, D], 111, 0.02, dtype=torch.bfloat16, device=dev)  # rows 0..I-1 = w1, I..2I-1 = w3
    w2 = hash_fill([E, D, I], 112, 0.02, dtype=torch.bfloat16, device=dev)
    # routing (outside the timed region): token t -> experts t mod E, (t+1) mod E, weights 0.5 / 0.5
    t_idx = torch.arange(T, device=dev, dtype=torch.int64)
    experts = torch.stack([t_idx % E, (t_idx + 1) % E], dim=1).reshape(-1)  # slot = 2t + k
    order = torch.sort(experts, stable=True).indices
    tok_sorted = order // Kk
    exp_sorted = experts[order]
    counts = torch.bincount(experts, minlength=E)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    offs_host = [0] + offs.cpu().tolist()
    M = T * Kk
    xs = x.index_select(0, tok_sorted).contiguous()  # expert-sorted token rows [M, D]
    w13_t = w13.transpose(1, 2)  # [E, D, 2I] view, column-major per expert (what torchtitan passes)
    w2_t = w2.transpose(1, 2)  # [E, I, D] view

    gname, gmm = _grouped_mm_fn()

    def swiglu(h):
        return F.silu(h[:, :I]) * h[:, I:]

    def experts_grouped():
        h = gmm(xs, w13_t, offs=offs, out_dtype=torch.bfloat16)  # [M, 2I]
        return gmm(swiglu(h), w2_t, offs=offs, out_dtype=torch.bfloat16)  # [M, D]

    def experts_loop():
        out = torch.empty(M, D, dtype=torch.bfloat16, device=dev)
        for e in range(E):
            a, b = offs_host[e], offs_host[e + 1]
            if b > a:
                h = torch.matmul(xs[a:b], w13[e].T)
                out[a:b] = torch.matmul(swiglu(h), w2[e].T)
        return out

    variants = {}
    if gmm is not None:
        variants[gname] = experts_grouped
    variants["torch.matmul per-expert loop"] = experts_loop
    # float64 reference for a few expert-sorted rows
    rows = sorted({0, 1, offs_host[1] - 1, offs_host[1], M // 2 + 3, M - 1})
    ref = []
    ex_rows = exp_sorted[rows].cpu().tolist()
    for r, e in zip(rows, ex_rows):
        xr = xs[r].to(torch.float64)
        w = w13[e].to(torch.float64)
        h1, h3 = torch.matmul(w[:I], xr), torch.matmul(w[I:], xr)
        del w
        ref.append(torch.matmul(w2[e].to(torch.float64), F.silu(h1) * h3))
    ref = torch.stack(ref)
    flops = float(M) * (2.0 * D * 2 * I + 2.0 * I * D)
    results = {}
    for name, fn in variants.items():
        try:
            o = fn()
            sync()
            chk = rel_err(o[rows], ref)
            del o
            if not math.isfinite(chk["max_rel"]):
                raise RuntimeError(f"non-finite output: {chk}")
            t = bench(fn, groups=cfg["groups"], min_group_ms=cfg["min_group_ms"])
            results[name] = {"ms": t["ms"], "tflops": tflop_per_s(flops, t["ms"]), "timing": t, "check": chk}
        except Exception as e:  # noqa: BLE001
            results[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
        free()
    # apples-to-apples extra: the whole op (gather, GEMMs, SwiGLU, weighted combine) with the grouped GEMM
    extra = None
    if gmm is not None and "ms" in results.get(gname, {}):
        wts = torch.full((M,), 0.5, dtype=torch.float32, device=dev)

        def whole_op():
            xg = x.index_select(0, tok_sorted)
            h = gmm(xg, w13_t, offs=offs, out_dtype=torch.bfloat16)
            o = gmm(swiglu(h), w2_t, offs=offs, out_dtype=torch.bfloat16)
            y = torch.zeros(T, D, dtype=torch.float32, device=dev)
            y.index_add_(0, tok_sorted, o.float() * wts[:, None])
            return y.to(torch.bfloat16)

        try:
            t = bench(whole_op, groups=cfg["groups"], min_group_ms=cfg["min_group_ms"])
            extra = {"ms": t["ms"], "tflops": tflop_per_s(flops, t["ms"]), "timing": t,
                     "what": "index_select gather + 2 grouped GEMMs + SwiGLU + fp32 index_add_ combine (weights 0.5)"}
        except Exception as e:  # noqa: BLE001
            extra = {"error": f"{type(e).__name__}: {e}"[:500]}
    details = {"E": E, "D": D, "I": I, "T": T, "K": Kk, "slots_per_expert": counts.cpu().tolist()[:4] + ["..."],
               "flops": flops, "quick": cfg["quick"], "checked_sorted_rows": rows, "variants": results,
               "with_permute_and_combine": extra,
               "layout": "mat_b = w13.transpose(1,2) [E, D, 2I] and w2.transpose(1,2) [E, I, D], column-major "
                         "views of the row-major weights (no copy); tokens gathered in expert order outside the "
                         "timed region; h and the SwiGLU product in bf16"}
    ok = [n for n in results if "ms" in results[n]]
    if not ok:
        return {"metric": "moe_expert_gemm_tflops_4k_tokens_per_expert", "baseline": gname or "torch.matmul per-expert loop",
                "value": None, "unit": "TFLOP/s", "check_rel_err": None, "details": details, "reason": "no variant ran"}
    best = gname if gname in ok else ok[0]
    details["reported_variant"] = best
    return {
        "metric": "moe_expert_gemm_tflops_4k_tokens_per_expert",
        "baseline": best + " (w13 GEMM, SwiGLU, w2 GEMM; sort and combine outside)",
        "value": results[best]["tflops"],
        "unit": "TFLOP/s",
        "check_rel_err": results[best]["check"]["max_rel"],
        "details": details,
    }


# ================================================================================================ slice model (transformers)
def run_slice_decode(cfg) -> dict:
    metric = "slice_decode_tokens_per_s_b64"
    base = {"metric": metric, "baseline": "transformers MiniMaxForCausalLM eager (bf16, random weights)", "value": None,
            "unit": "tokens/s", "check_rel_err": None, "details": {"quick": cfg["quick"]}}
    try:
        import transformers
    except Exception as e:  # noqa: BLE001
        return {**base, "reason": f"transformers not importable: {type(e).__name__}: {e}"[:300]}
    Model = getattr(transformers, "MiniMaxForCausalLM", None)
    Config = getattr(transformers, "MiniMaxConfig", None)
    base["details"]["transformers"] = getattr(transformers, "__version__", "?")
    if Model is None or Config is None:
        return {**base, "reason": f"transformers {base['details']['transformers']} has no MiniMaxForCausalLM / MiniMaxConfig"}
    if cfg["quick"]:
        dims = dict(vocab_size=32000, hidden_size=1024, intermediate_size=1024, num_attention_heads=8,
                    num_key_value_heads=2, head_dim=128, num_local_experts=4)
    else:  # bench/slice.ts sliceConfig
        dims = dict(vocab_size=200064, hidden_size=6144, intermediate_size=9216, num_attention_heads=64,
                    num_key_value_heads=8, head_dim=128, num_local_experts=32)
    L = 8
    ab = (2 * L) ** 0.25
    kw = dict(dims, num_hidden_layers=L, num_experts_per_tok=2, rms_norm_eps=1e-5, max_position_embeddings=10240000,
              layer_types=["linear_attention"] * 7 + ["full_attention"],  # attn_type_list [0]*7 + [1]
              block_size=256, full_attn_alpha_factor=ab, full_attn_beta_factor=1, linear_attn_alpha_factor=ab,
              linear_attn_beta_factor=1, mlp_alpha_factor=ab, mlp_beta_factor=1)
    B, P = 64, 128
    model = None
    try:
        conf = Config(**kw)
        prev = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # parameters created in bf16 directly on the GPU (no fp32 copy)
        try:
            with torch.device(cfg["device"]):
                model = Model(conf)
        finally:
            torch.set_default_dtype(prev)
        model.eval()
        nparams = sum(p.numel() for p in model.parameters())
        base["details"].update({"config": {k: (v if not isinstance(v, list) else "7 linear + 1 full") for k, v in kw.items()},
                                "params": nparams, "batch": B, "prompt": P,
                                "attn_implementation": getattr(conf, "_attn_implementation", None),
                                "note": "rotary_dim 64 / rope_theta of the slice not mapped (transformers defaults)"})
        gen = torch.Generator(device=cfg["device"])
        gen.manual_seed(0)
        ids = torch.randint(0, dims["vocab_size"], (B, P), device=cfg["device"], generator=gen)

        def fwd(**a):
            try:
                return model(**a, logits_to_keep=1)
            except TypeError:
                return model(**a)

        state = {}
        with torch.inference_mode():
            o = fwd(input_ids=ids, use_cache=True)
            state["cache"] = o.past_key_values
            state["nxt"] = o.logits[:, -1:].argmax(-1)
            del o

            def step():
                r = fwd(input_ids=state["nxt"], past_key_values=state["cache"], use_cache=True)
                state["cache"] = r.past_key_values
                state["nxt"] = r.logits[:, -1:].argmax(-1)

            t = bench(step, groups=cfg["groups"], min_group_ms=cfg["min_group_ms"], warmup=2, max_reps=16)
        base["details"]["timing"] = t
        base["details"]["ms_per_step"] = t["ms"]
        return {**base, "value": B / (t["ms"] * 1e-3)}
    except Exception as e:  # noqa: BLE001
        return {**base, "reason": f"{type(e).__name__}: {e}"[:500], "details": {**base["details"], "traceback": traceback.format_exc()[-3000:]}}
    finally:
        del model
        free()


# ================================================================================================ driver
METRICS = [  # (metric, alias, unit, function, baseline named when the function fails before naming one)
    ("lightning_prefill_ms_h8_d128_n1m", "lightning_prefill", "ms", run_lightning_prefill,
     "torch chunked lightning (bf16 matmuls with fp32 accumulation, fp32 inter and state)"),
    ("lightning_decode_tbps_h64_b256", "lightning_decode", "TB/s", run_lightning_decode,
     "torch eager decode step (fp32 state in place)"),
    ("attention_prefill_tflops_h64_kv8_d128_n16k", "attention_prefill", "TFLOP/s", run_attention_prefill,
     "sdpa (is_causal, enable_gqa)"),
    ("attention_decode_tbps_n1m", "attention_decode", "TB/s", run_attention_decode, "sdpa (enable_gqa)"),
    ("moe_expert_gemm_tflops_4k_tokens_per_expert", "moe", "TFLOP/s", run_moe, "torch._grouped_mm"),
    ("slice_decode_tokens_per_s_b64", "slice_decode", "tokens/s", run_slice_decode,
     "transformers MiniMaxForCausalLM eager (bf16, random weights)"),
]


def make_cfg(quick: bool, groups: int, min_group_ms: float, device) -> dict:
    cfg = {"quick": quick, "groups": groups, "min_group_ms": min_group_ms, "device": device,
           "lp_n": 1 << 20, "lp_check": 4096, "lp_group": 256,
           "ld_b": 256, "ap_n": 16384, "ad_n": 1 << 20,
           "moe_e": 32, "moe_d": 6144, "moe_i": 9216, "moe_t": 65536}
    if quick:
        cfg.update({"lp_n": 1 << 16, "lp_check": 1024, "lp_group": 64, "ld_b": 32, "ap_n": 2048, "ad_n": 1 << 16,
                    "moe_d": 1024, "moe_i": 2048, "moe_t": 8192})
    return cfg


def _clean(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def select(only: str | None) -> list:
    if not only:
        return METRICS
    want = [w.strip() for w in only.split(",") if w.strip()]
    sel = [m for m in METRICS if any(w == m[0] or w == m[1] or m[0].startswith(w) for w in want)]
    unknown = [w for w in want if not any(w == m[0] or w == m[1] or m[0].startswith(w) for m in METRICS)]
    if unknown:
        raise SystemExit(f"unknown metric(s): {unknown}; known: {[m[0] for m in METRICS]} or {[m[1] for m in METRICS]}")
    return sel


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--groups", type=int, default=5)
    ap.add_argument("--min-group-ms", type=float, default=50.0)
    args = ap.parse_args(argv)
    sel = select(args.only)
    if torch is None:
        print("baselines.py: torch is not importable", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    device = torch.device("cuda") if cuda else torch.device("cpu")
    try:
        torch.set_float32_matmul_precision("highest")  # fp32 matmuls in full fp32 (no TF32)
    except Exception:  # noqa: BLE001
        pass
    header = {
        "torch": torch.__version__,
        "cuda": getattr(torch.version, "cuda", None),
        "cudnn": (torch.backends.cudnn.version() if cuda else None),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA)",
        "capability": list(torch.cuda.get_device_capability(0)) if cuda else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "args": vars(args),
        "flags": {
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "allow_bf16_reduced_precision_reduction": getattr(torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction", None),
        },
    }
    print(f"torch {header['torch']} (CUDA {header['cuda']}), device {header['device']}", flush=True)
    try:
        header["hash_self_check"] = hash_self_check(device)
        print(f"hash self-check ok on {device} ({header['hash_self_check']['values_checked']} values)", flush=True)
    except AssertionError as e:
        print(f"HASH SELF-CHECK FAILED: {e}", file=sys.stderr, flush=True)
        header["hash_self_check"] = {"ok": False, "error": str(e)}
        if args.out:
            write_json(args.out, header, [])
        return 3
    cfg = make_cfg(args.quick, args.groups, args.min_group_ms, device)
    results = []
    for name, _alias, unit, fn, default_baseline in sel:
        print(f"--- {name}", flush=True)
        free()
        t0 = time.time()
        if not cuda:
            res = {"metric": name, "baseline": default_baseline, "value": None, "unit": unit, "check_rel_err": None,
                   "details": {}, "reason": "CUDA not available"}
        else:
            torch.cuda.reset_peak_memory_stats()
            try:
                with torch.inference_mode():
                    res = fn(cfg)
            except Exception as e:  # noqa: BLE001 - one failing baseline must not stop the others
                res = {"metric": name, "baseline": default_baseline, "value": None, "unit": unit, "check_rel_err": None,
                       "details": {"traceback": traceback.format_exc()[-4000:]}, "reason": f"{type(e).__name__}: {e}"[:500]}
            res.setdefault("details", {})["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res["details"]["wall_s"] = time.time() - t0
        results.append(res)
        v = res.get("value")
        print(f"    {res.get('baseline')}: {v if v is None else f'{v:.4g}'} {unit}"
              + (f"  (check {res['check_rel_err']:.2e})" if res.get("check_rel_err") is not None else "")
              + (f"  [{res['reason']}]" if res.get("reason") else ""), flush=True)
        free()
        if args.out:  # written after every metric, so a later crash keeps the earlier figures
            write_json(args.out, header, results)
    print_table(results)
    if args.out:
        write_json(args.out, header, results)
        print(f"written to {args.out}")
    return 0


def write_json(path: str, header: dict, results: list):
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean({**header, "results": results}), f, indent=2)
        f.write("\n")


def print_table(results: list):
    print()
    print(f"{'metric':45} {'value':>12} {'unit':9} {'check':>9}  baseline")
    for r in results:
        v = r.get("value")
        c = r.get("check_rel_err")
        vs = "null" if v is None else f"{v:.4g}"
        cs = "-" if c is None else f"{c:.2e}"
        tail = r.get("baseline") or ""
        if r.get("reason"):
            tail += f"  [{r['reason'][:120]}]"
        print(f"{r['metric']:45} {vs:>12} {r['unit']:9} {cs:>9}  {tail}")


if __name__ == "__main__":
    sys.exit(main())
