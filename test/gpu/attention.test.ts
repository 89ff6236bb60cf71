/**
 * CUDA softmax attention (kernels/attention.cu through ops/attention.ts) against the CPU backend's `attention` (fp32,
 * float64 softmax) or, where that is too slow, against a float64 reference on sampled (row, head) pairs.
 *
 * The caches are paged as in src/model/cache.ts: one K and one V pool per case, shared by all its segments and larger
 * than needed, and per segment an i32 block table whose ids are a shuffled, non-contiguous draw from the pool (the
 * segments' blocks interleave), so a kernel that maps a row wrongly reads another row's data. The CPU backend gets
 * the same pools and tables.
 *
 * Inputs are random bf16-representable values (never zeros); every pool row that is not a valid cache row of some
 * segment is NaN (spare blocks, the rows past each segment's length in its last block), and each table has spare
 * entries past its last mapped block that point at a NaN block, so a kernel that reads an unmapped row or table entry
 * (or multiplies such a row by a zero weight) fails; outputs are poisoned with NaN before each run, so an unwritten
 * element fails too (relErr returns Infinity on NaN). Errors are ‖gpu − ref‖ / ‖ref‖ per segment.
 *
 * Tolerance: the tensor-core paths round P to bf16 before P·V and round the output to bf16, the generic paths
 * round only the output; the output rounding dominates (~1.5e-3 norm-relative on these random data). Measured on an
 * H200 with the paged caches (2026-11-26): 0.9e-3 to 2.3e-3 (tensor cores), 0.9e-3 to 2.2e-3 (generic; before paging
 * up to 2.6e-3, where a case has only 12–48 output values per segment). The bound is 6e-3 for both, and every test
 * prints what it measured.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { KV_BLOCK_SIZE, type AttentionSegment, type Tensor } from '../../src/backend/backend.js';
import type { CudaTensor } from '../../src/backend/cuda/cuda-backend.js';
import type { OpRuntime } from '../../src/backend/cuda/runtime.js';
import { attentionDecode, attentionPrefill, type PrefillKernel } from '../../src/backend/cuda/ops/attention.js';
import { roundBf16 } from '../../src/util/dtype.js';
import { Rng, bf16Values, cpu, getGpu, poison, randn, relErr, type Gpu } from '../helpers/gpu.js';

const { gpu, reason } = await getGpu();
const skip: string | false = gpu ? false : (reason ?? 'no GPU');
const arch = gpu ? (gpu.backend as unknown as OpRuntime).ctx.info.arch : '';
const skipSm90: string | false = skip || (arch === 'sm_90a' ? false : `the wgmma prefill kernel needs sm_90a (device: ${arch})`);

/** The Dh 128 prefill kernels the forced-kernel test runs (kernels/attention_sm90.cu variants, then attention.cu's). */
const SM90_VARIANTS: readonly PrefillKernel[] = ['sm90', 'sm90-serial', 'sm90-ov', 'sm90-pp', 'sm90-smx', 'mma'];

/** Norm-relative error bounds (see the file header). */
const TOL_TC = 6e-3;
const TOL_GENERIC = 6e-3;

type Mode = 'backend' | 'prefill' | 'decode';

interface SegSpec {
  readonly len: number;
  readonly past: number;
  /**
   * Cache rows whose key is set to c·q (q = the segment's last query row, per kv head its group's first query head),
   * c chosen so the spike carries about half of that head's softmax mass: checks those rows are attended.
   */
  readonly spikes?: readonly number[];
}

/** A paged layout: pool size and each segment's block table (mapped blocks, then spare entries). */
interface Paging {
  readonly blocks: number;
  readonly tables: Int32Array[];
}

/**
 * Block tables for segments needing `need[i]` blocks: the pool has `spare` blocks more than needed; ids are drawn
 * from a shuffled permutation of the pool (the spare blocks first, so they are scattered among the used ones), and
 * each table ends with 1–3 entries that point at a spare block (never to be read).
 */
function page(rng: Rng, need: readonly number[], spare: number): Paging {
  const used = need.reduce((a, b) => a + b, 0);
  const blocks = used + Math.max(spare, 1);
  const ids = Int32Array.from({ length: blocks }, (_, i) => i);
  for (let i = blocks - 1; i > 0; i--) {
    const j = Math.floor(rng.next() * (i + 1));
    [ids[i], ids[j]] = [ids[j], ids[i]];
  }
  let next = blocks - used;
  const tables = need.map((nb, i) => {
    const t = new Int32Array(nb + 1 + (i % 3)).fill(ids[i % (blocks - used)]);
    t.set(ids.subarray(next, next + nb));
    next += nb;
    return t;
  });
  return { blocks, tables };
}

/** Pool row of cache row r under `table`. */
function poolRow(table: Int32Array, r: number): number {
  return table[Math.floor(r / KV_BLOCK_SIZE)] * KV_BLOCK_SIZE + (r % KV_BLOCK_SIZE);
}

interface Built {
  readonly H: number;
  readonly Hkv: number;
  readonly Dh: number;
  readonly T: number;
  readonly q: Float32Array;
  readonly qG: Tensor;
  readonly starts: number[];
  readonly specs: readonly SegSpec[];
  /** The K / V pools [blocks · KV_BLOCK_SIZE, Hkv, Dh] (host copies) and each segment's block table. */
  readonly kPool: Float32Array;
  readonly vPool: Float32Array;
  readonly tables: Int32Array[];
  readonly segsG: AttentionSegment[];
  readonly owned: Tensor[];
}

function need(): Gpu {
  assert.ok(gpu);
  return gpu;
}

function build(g: Gpu, seed: number, H: number, Hkv: number, Dh: number, specs: readonly SegSpec[], qScale = 1): Built {
  const rng = new Rng(seed);
  const G = H / Hkv;
  const row = Hkv * Dh;
  const T = specs.reduce((a, s) => a + s.len, 0);
  const q = bf16Values(randn(rng, T * H * Dh, qScale));
  const qG = g.backend.upload([T, H, Dh], 'bf16', q);
  const owned: Tensor[] = [qG];
  const need = specs.map((sp) => Math.ceil((sp.past + sp.len) / KV_BLOCK_SIZE));
  const { blocks, tables } = page(rng, need, 3 + Math.ceil(need.reduce((a, b) => a + b, 0) / 8));
  const poolRows = blocks * KV_BLOCK_SIZE;
  // Every row that is not a valid cache row stays NaN: never to be read.
  const kPool = new Float32Array(poolRows * row).fill(NaN);
  const vPool = new Float32Array(poolRows * row).fill(NaN);
  const starts: number[] = [];
  let start = 0;
  specs.forEach((sp, i) => {
    const n = sp.past + sp.len;
    const kd = bf16Values(randn(rng, n * row));
    const vd = bf16Values(randn(rng, n * row));
    const c = Math.log(Math.max(n, 2)) / (Math.sqrt(Dh) * qScale * qScale);
    const last = start + sp.len - 1;
    for (const r of sp.spikes ?? []) {
      for (let gg = 0; gg < Hkv; gg++) {
        const qo = (last * H + gg * G) * Dh, ko = (r * Hkv + gg) * Dh;
        for (let d = 0; d < Dh; d++) kd[ko + d] = roundBf16(c * q[qo + d]);
      }
    }
    for (let r = 0; r < n; r++) {
      const dst = poolRow(tables[i], r) * row;
      kPool.set(kd.subarray(r * row, (r + 1) * row), dst);
      vPool.set(vd.subarray(r * row, (r + 1) * row), dst);
    }
    starts.push(start);
    start += sp.len;
  });
  const kG = g.backend.upload([poolRows, Hkv, Dh], 'bf16', kPool);
  const vG = g.backend.upload([poolRows, Hkv, Dh], 'bf16', vPool);
  owned.push(kG, vG);
  const segsG: AttentionSegment[] = specs.map((sp, i) => {
    const blockTable = g.backend.upload([tables[i].length], 'i32', tables[i]);
    owned.push(blockTable);
    return { start: starts[i], length: sp.len, past: sp.past, k: kG, v: vG, blockTable };
  });
  return { H, Hkv, Dh, T, q, qG, starts, specs, kPool, vPool, tables, segsG, owned };
}

function release(g: Gpu, b: Built): void {
  for (const t of b.owned) g.backend.free(t);
}

/** Runs the op on the GPU into a poisoned output and downloads it. */
function runGpu(g: Gpu, b: Built, mode: Mode, kernel: PrefillKernel = 'auto'): Float32Array {
  const { H, Hkv, Dh, T } = b;
  const out = g.backend.alloc([T, H, Dh], 'bf16');
  poison(g, out);
  const scale = 1 / Math.sqrt(Dh);
  const rt = g.backend as unknown as OpRuntime;
  if (mode === 'backend') g.backend.attention(out, b.qG, b.segsG, scale);
  else if (mode === 'prefill') attentionPrefill(rt, out as CudaTensor, b.qG as CudaTensor, b.segsG, H, Hkv, Dh, scale, kernel);
  else attentionDecode(rt, out as CudaTensor, b.qG as CudaTensor, b.segsG, H, Hkv, Dh, scale);
  g.backend.synchronize();
  const res = g.backend.toFloat32(out);
  g.backend.free(out);
  return res;
}

/** The CPU backend's attention on the same values: f32 pools and the same block tables. */
function runCpu(b: Built): Float32Array {
  const { H, Hkv, Dh, T } = b;
  const qC = cpu.upload([T, H, Dh], 'f32', b.q);
  const poolRows = b.kPool.length / (Hkv * Dh);
  const k = cpu.upload([poolRows, Hkv, Dh], 'f32', b.kPool), v = cpu.upload([poolRows, Hkv, Dh], 'f32', b.vPool);
  const segsC: AttentionSegment[] = b.specs.map((sp, i) => ({
    start: b.starts[i], length: sp.len, past: sp.past, k, v, blockTable: cpu.upload([b.tables[i].length], 'i32', b.tables[i]),
  }));
  const out = cpu.zeros([T, H, Dh], 'f32');
  cpu.attention(out, qC, segsC, 1 / Math.sqrt(Dh));
  return cpu.toFloat32(out);
}

/** Per-segment norm-relative errors of the whole output against the CPU backend; returns the largest. */
function compareFull(t: TestContext, b: Built, got: Float32Array, want: Float32Array, tol: number, what: string): void {
  const row = b.H * b.Dh;
  let worst = 0;
  const parts: string[] = [];
  b.specs.forEach((sp, i) => {
    const lo = b.starts[i] * row, hi = lo + sp.len * row;
    const e = relErr(got.subarray(lo, hi), want.subarray(lo, hi));
    parts.push(`len ${sp.len}/past ${sp.past}: ${e.toExponential(2)}`);
    worst = Math.max(worst, e);
  });
  t.diagnostic(`${what}: ${parts.join(', ')}`);
  assert.ok(worst <= tol, `${what}: relative error ${worst} > ${tol}`);
}

/** float64 attention of one query vector over keys [0, n); keyOff(j) gives the element offset of key/value row j. */
function refRow(q: Float32Array, qOff: number, K: Float32Array, V: Float32Array, keyOff: (j: number) => number, n: number, Dh: number): Float64Array {
  const scale = 1 / Math.sqrt(Dh);
  const sc = new Float64Array(n);
  let max = -Infinity;
  for (let j = 0; j < n; j++) {
    const o = keyOff(j);
    let acc = 0;
    for (let d = 0; d < Dh; d++) acc += q[qOff + d] * K[o + d];
    sc[j] = acc * scale;
    if (sc[j] > max) max = sc[j];
  }
  const out = new Float64Array(Dh);
  let sum = 0;
  for (let j = 0; j < n; j++) {
    const p = Math.exp(sc[j] - max);
    sum += p;
    const o = keyOff(j);
    for (let d = 0; d < Dh; d++) out[d] += p * V[o + d];
  }
  for (let d = 0; d < Dh; d++) out[d] /= sum;
  return out;
}

/**
 * Compares sampled (segment row, head) pairs against refRow, and checks every output element is finite (written).
 * Rows: the first, last, tile edges and random ones; heads random.
 */
function compareSampled(t: TestContext, b: Built, got: Float32Array, seg: number, pairs: number, tol: number, what: string, seed: number): void {
  const { H, Hkv, Dh } = b;
  const G = H / Hkv;
  const sp = b.specs[seg];
  for (let i = b.starts[seg] * H * Dh; i < (b.starts[seg] + sp.len) * H * Dh; i++) {
    if (!Number.isFinite(got[i])) assert.fail(`${what}: output element ${i} is not finite (${got[i]})`);
  }
  const rng = new Rng(seed);
  const rows = new Set<number>([0, sp.len - 1]);
  for (const r of [63, 64, 65, 127, 128, sp.len - 64, sp.len - 65]) if (r >= 0 && r < sp.len) rows.add(r);
  while (rows.size < Math.min(sp.len, pairs)) rows.add(Math.floor(rng.next() * sp.len));
  const a: number[] = [], r64: number[] = [];
  for (const i of rows) {
    const h = Math.floor(rng.next() * H), gg = Math.floor(h / G);
    const row = b.starts[seg] + i;
    const ref = refRow(b.q, (row * H + h) * Dh, b.kPool, b.vPool, (j) => (poolRow(b.tables[seg], j) * Hkv + gg) * Dh, sp.past + i + 1, Dh);
    for (let d = 0; d < Dh; d++) {
      a.push(got[(row * H + h) * Dh + d]);
      r64.push(ref[d]);
    }
  }
  const e = relErr(a, r64);
  t.diagnostic(`${what}: ${rows.size} sampled (row, head) pairs, relative error ${e.toExponential(2)}`);
  assert.ok(e <= tol, `${what}: relative error ${e} > ${tol}`);
}

function fullCase(t: TestContext, seed: number, H: number, Hkv: number, Dh: number, specs: SegSpec[], mode: Mode, tol: number, what: string, qScale = 1): void {
  const g = need();
  const b = build(g, seed, H, Hkv, Dh, specs, qScale);
  try {
    compareFull(t, b, runGpu(g, b, mode), runCpu(b), tol, what);
  } finally {
    release(g, b);
  }
}

// ------------------------------------------------------------------------------------------------ prefill

test('attention prefill, tensor cores, Dh 128, H 4 / Hkv 2: lengths 1, 7, 64, 65, 300, 1000 (one segment each)', { skip }, (t) => {
  for (const len of [1, 7, 64, 65, 300, 1000]) {
    fullCase(t, 100 + len, 4, 2, 128, [{ len, past: 0 }], 'prefill', TOL_TC, `len ${len}`);
  }
});

test('attention prefill, real geometry H 64 / Hkv 8 / Dh 128: lengths 1, 7, 64, 65, 300 against the CPU backend', { skip }, (t) => {
  for (const len of [1, 7, 64, 65, 300]) {
    fullCase(t, 200 + len, 64, 8, 128, [{ len, past: 0 }], 'prefill', TOL_TC, `len ${len}`);
  }
});

test('attention prefill, real geometry H 64 / Hkv 8 / Dh 128: lengths 1000 and 4096, sampled float64 reference', { skip }, (t) => {
  const g = need();
  for (const len of [1000, 4096]) {
    const b = build(g, 300 + len, 64, 8, 128, [{ len, past: 0 }]);
    try {
      compareSampled(t, b, runGpu(g, b, 'backend'), 0, 48, TOL_TC, `len ${len}`, len);
    } finally {
      release(g, b);
    }
  }
});

test('attention prefill, 16K tokens (H 8 / Hkv 1 / Dh 128), sampled float64 reference', { skip }, (t) => {
  const g = need();
  const b = build(g, 416, 8, 1, 128, [{ len: 16384, past: 0 }]);
  try {
    compareSampled(t, b, runGpu(g, b, 'backend'), 0, 40, TOL_TC, 'len 16384', 16);
  } finally {
    release(g, b);
  }
});

test('attention prefill, peaked scores (q scaled ×4): tensor cores stay within bf16 noise', { skip }, (t) => {
  fullCase(t, 500, 4, 2, 128, [{ len: 300, past: 0 }], 'prefill', TOL_TC, 'len 300, q ×4', 4);
  fullCase(t, 501, 4, 2, 64, [{ len: 130, past: 20 }], 'prefill', TOL_TC, 'Dh 64, len 130, past 20, q ×4', 4);
});

test('attention prefill, continuation chunks (past > 0)', { skip }, (t) => {
  fullCase(t, 600, 4, 2, 128, [{ len: 300, past: 1000 }], 'prefill', TOL_TC, 'past 1000');
  fullCase(t, 601, 4, 2, 128, [{ len: 65, past: 37 }], 'prefill', TOL_TC, 'past 37 (unaligned diagonal)');
  fullCase(t, 602, 4, 2, 64, [{ len: 100, past: 5000 }], 'prefill', TOL_TC, 'Dh 64, past 5000');
  const g = need();
  const b = build(g, 603, 8, 1, 128, [{ len: 200, past: 20000 }]);
  try {
    compareSampled(t, b, runGpu(g, b, 'prefill'), 0, 24, TOL_TC, 'past 20000 (sampled)', 603);
  } finally {
    release(g, b);
  }
});

test('attention, several segments of different lengths in one call (prefill and decode mixed)', { skip }, (t) => {
  const specs: SegSpec[] = [
    { len: 7, past: 0 },
    { len: 130, past: 0 },
    { len: 65, past: 40 },
    { len: 1, past: 33 },
    { len: 1, past: 0 },
    { len: 300, past: 77 },
  ];
  fullCase(t, 700, 4, 2, 128, specs, 'backend', TOL_TC, 'backend, Dh 128');
  fullCase(t, 701, 4, 2, 64, specs, 'backend', TOL_TC, 'backend, Dh 64');
  // the prefill kernel itself with one-row segments among longer ones
  fullCase(t, 702, 4, 2, 128, specs, 'prefill', TOL_TC, 'prefill kernel, Dh 128');
});

test('attention prefill, each Dh 128 kernel forced (the sm90 variants and mma): segments, past, GQA, against the CPU backend and each other', { skip: skipSm90 }, (t) => {
  const g = need();
  const cases: { seed: number; H: number; Hkv: number; specs: SegSpec[]; qScale?: number }[] = [
    {
      seed: 1500, H: 4, Hkv: 2,
      specs: [{ len: 1, past: 0 }, { len: 130, past: 0 }, { len: 65, past: 40 }, { len: 300, past: 77 }, { len: 129, past: 128 }, { len: 256, past: 1000 }, { len: 7, past: 190 }],
    },
    { seed: 1501, H: 64, Hkv: 8, specs: [{ len: 200, past: 63 }, { len: 127, past: 1 }] },
    { seed: 1502, H: 8, Hkv: 1, specs: [{ len: 1000, past: 0 }], qScale: 4 },
  ];
  for (const c of cases) {
    const b = build(g, c.seed, c.H, c.Hkv, 128, c.specs, c.qScale ?? 1);
    try {
      const want = runCpu(b);
      const got: Partial<Record<PrefillKernel, Float32Array>> = {};
      for (const k of SM90_VARIANTS) {
        got[k] = runGpu(g, b, 'prefill', k);
        compareFull(t, b, got[k], want, TOL_TC, `seed ${c.seed}, ${k}`);
      }
      const diffs = SM90_VARIANTS.filter((k) => k !== 'sm90').map((k) => [k, relErr(got.sm90!, got[k]!)] as const);
      t.diagnostic(`seed ${c.seed}: relative difference of sm90 to ${diffs.map(([k, d]) => `${k} ${d.toExponential(2)}`).join(', ')}`);
      for (const [k, d] of diffs) assert.ok(d <= TOL_TC, `seed ${c.seed}: sm90 and ${k} disagree (${d})`);
    } finally {
      release(g, b);
    }
  }
});

test('attention prefill, Dh 64 (tensor cores): lengths 1, 65, 300', { skip }, (t) => {
  for (const len of [1, 65, 300]) fullCase(t, 800 + len, 4, 2, 64, [{ len, past: 0 }], 'prefill', TOL_TC, `len ${len}`);
});

test('attention prefill, generic path: Dh 16, 12, 80 and 96, H 6 / Hkv 3 and H 4 / Hkv 2', { skip }, (t) => {
  for (const Dh of [16, 12]) {
    fullCase(t, 900 + Dh, 6, 3, Dh, [{ len: 1, past: 0 }, { len: 70, past: 0 }, { len: 33, past: 200 }], 'prefill', TOL_GENERIC, `Dh ${Dh}, H 6 / Hkv 3`);
    fullCase(t, 910 + Dh, 4, 2, Dh, [{ len: 300, past: 0 }], 'backend', TOL_GENERIC, `Dh ${Dh}, H 4 / Hkv 2`);
  }
  // wider heads over many blocks, continuation chunks whose keys start mid-block
  const specs: SegSpec[] = [{ len: 70, past: 0 }, { len: 33, past: 200 }, { len: 130, past: 1000 }, { len: 1, past: 64 }];
  fullCase(t, 980, 6, 3, 80, specs, 'prefill', TOL_GENERIC, 'Dh 80, H 6 / Hkv 3');
  fullCase(t, 996, 4, 2, 96, [{ len: 200, past: 37 }, { len: 65, past: 0 }], 'backend', TOL_GENERIC, 'Dh 96, H 4 / Hkv 2');
});

// ------------------------------------------------------------------------------------------------ decode

test('attention decode, real geometry H 64 / Hkv 8 / Dh 128: contexts 1, 2, 33, 1000 in one call', { skip }, (t) => {
  const specs: SegSpec[] = [
    { len: 1, past: 0 },
    { len: 1, past: 1 },
    { len: 1, past: 32, spikes: [5] },
    { len: 1, past: 999, spikes: [31, 32, 255, 256, 999] }, // splits of 256 keys
  ];
  fullCase(t, 1000, 64, 8, 128, specs, 'decode', TOL_TC, 'decode op');
  fullCase(t, 1001, 64, 8, 128, specs, 'backend', TOL_TC, 'backend');
});

test('attention decode, 65536-token context with other sequences (H 16 / Hkv 2 / Dh 128)', { skip }, (t) => {
  const specs: SegSpec[] = [
    { len: 1, past: 65535, spikes: [0, 2047, 2048, 40000, 65535] }, // splits of 2048 keys
    { len: 1, past: 4999, spikes: [157, 255, 256, 4999] }, // splits of 256 keys (the minimum), 20 of 32 used
    // ⌈10000 / 32⌉ = 313 keys round up to splits of 320 (5 blocks): 31 full splits and one of 80 keys; unrounded
    // splits would start mid-block (313, 626, ...)
    { len: 1, past: 9999, spikes: [312, 313, 319, 320, 639, 640, 9919, 9920, 9999] },
  ];
  fullCase(t, 1100, 16, 2, 128, specs, 'decode', TOL_TC, 'n 65536 + n 5000 + n 10000');
});

test('attention decode, Dh 64 (tensor cores): contexts 1, 2, 33, 1000, 3000, 20000', { skip }, (t) => {
  // 20000: ⌈20000 / 32⌉ = 625 keys per split round up to 640 (10 blocks), 32 splits with the last one of 160
  const specs: SegSpec[] = [1, 2, 33, 1000, 3000, 20000].map((n) => ({ len: 1, past: n - 1, spikes: [Math.floor(n / 2)] }));
  fullCase(t, 1200, 8, 2, 64, specs, 'decode', TOL_TC, 'Dh 64');
});

test('attention decode, generic path: Dh 16, 12 and 80, and a GQA group of 32 heads (Dh 64)', { skip }, (t) => {
  const specs: SegSpec[] = [1, 2, 33, 1000].map((n) => ({ len: 1, past: n - 1, spikes: [n - 1] }));
  for (const Dh of [16, 12]) {
    fullCase(t, 1300 + Dh, 6, 3, Dh, specs, 'decode', TOL_GENERIC, `Dh ${Dh}, H 6 / Hkv 3`);
    fullCase(t, 1320 + Dh, 4, 2, Dh, specs, 'backend', TOL_GENERIC, `Dh ${Dh}, H 4 / Hkv 2`);
  }
  fullCase(t, 1340, 32, 1, 64, specs, 'decode', TOL_GENERIC, 'H 32 / Hkv 1 (G = 32 > 16)');
  // Dh 80 over several blocks, with split boundaries rounded to blocks (10000: splits of 320 keys)
  const long: SegSpec[] = [...specs, { len: 1, past: 9999, spikes: [319, 320, 9999] }, { len: 1, past: 4095, spikes: [4095] }];
  fullCase(t, 1380, 6, 2, 80, long, 'decode', TOL_GENERIC, 'Dh 80, H 6 / Hkv 2');
});

test('attention decode, 1M-token context (H 8 / Hkv 1 / Dh 128) in a shuffled pool of 16448 blocks, float64 reference', { skip }, (t) => {
  const g = need();
  const H = 8, Hkv = 1, Dh = 128, N = 1 << 20;
  const P = 65521; // the cache repeats a random block of a prime number of rows (host memory and time)
  const rng = new Rng(1400);
  const q = bf16Values(randn(rng, H * Dh));
  // The source rows, plus a NaN row P for every pool row that is not a cache row (spare blocks).
  const kb = new Float32Array((P + 1) * Dh).fill(NaN), vb = new Float32Array((P + 1) * Dh).fill(NaN);
  kb.set(bf16Values(randn(rng, P * Dh)));
  vb.set(bf16Values(randn(rng, P * Dh)));
  // two spike rows in the block (each repeats ⌈N/P⌉ times) aligned with heads 0 and 5
  const c = Math.log(N / 16) / Math.sqrt(Dh);
  for (const [row, h] of [[1234, 0], [P - 1, 5]] as const) for (let d = 0; d < Dh; d++) kb[row * Dh + d] = roundBf16(c * q[h * Dh + d]);
  // Paged: 16384 blocks drawn from a shuffled pool of 16448; pool row p holds source row src[p] (cache row j: j mod P).
  const { blocks, tables: [table] } = page(rng, [N / KV_BLOCK_SIZE], 64);
  const poolRows = blocks * KV_BLOCK_SIZE;
  const src = new Int32Array(poolRows).fill(P);
  for (let j = 0; j < N; j++) src[poolRow(table, j)] = j % P;
  const kG = g.backend.alloc([poolRows, Hkv, Dh], 'bf16'), vG = g.backend.alloc([poolRows, Hkv, Dh], 'bf16');
  const kBlk = g.backend.upload([P + 1, Hkv * Dh], 'bf16', kb), vBlk = g.backend.upload([P + 1, Hkv * Dh], 'bf16', vb);
  const srcG = g.backend.upload([poolRows], 'i32', src);
  const tableG = g.backend.upload([table.length], 'i32', table);
  const qG = g.backend.upload([1, H, Dh], 'bf16', q);
  const out = g.backend.alloc([1, H, Dh], 'bf16');
  try {
    g.backend.gatherRows(g.backend.view(kG, [poolRows, Hkv * Dh]), kBlk, srcG);
    g.backend.gatherRows(g.backend.view(vG, [poolRows, Hkv * Dh]), vBlk, srcG);
    poison(g, out);
    const seg: AttentionSegment = { start: 0, length: 1, past: N - 1, k: kG, v: vG, blockTable: tableG };
    attentionDecode(g.backend as unknown as OpRuntime, out as CudaTensor, qG as CudaTensor, [seg], H, Hkv, Dh, 1 / Math.sqrt(Dh));
    g.backend.synchronize();
    const got = g.backend.toFloat32(out);
    const want = new Float64Array(H * Dh);
    for (let h = 0; h < H; h++) want.set(refRow(q, h * Dh, kb, vb, (j) => (j % P) * Dh, N, Dh), h * Dh);
    const e = relErr(got, want);
    t.diagnostic(`n = ${N}: relative error ${e.toExponential(2)}`);
    assert.ok(e <= TOL_TC, `1M decode: relative error ${e} > ${TOL_TC}`);
  } finally {
    for (const x of [kG, vG, kBlk, vBlk, srcG, tableG, qG, out]) g.backend.free(x);
  }
});
