/**
 * The five kernel metrics of bench/METRICS.md on our CUDA ops, with exactly the inputs listed there (fillRandom with
 * the METRICS seeds and scales; element indices row-major over the listed shapes), each checked against a float64
 * reference computed on the host (a slice where the whole is too large) before it is timed.
 *
 *  lightning_prefill_ms_h8_d128_n1m               lightningAttention, one segment of 2^20 tokens, H 8, Dh 128,
 *                                                 block 256, from a zero state (the memset of the 512 KB state
 *                                                 is inside the timed region: ≈ 1 µs) → ms
 *  lightning_decode_tbps_h64_b256                 lightningAttention, 256 one-token segments, H 64, states read and
 *                                                 updated in place → (2·state + qkv + out bytes) ÷ time
 *  attention_prefill_tflops_h64_kv8_d128_n16k     attention, one causal segment of 16384 rows over paged pools with
 *                                                 an identity block table (K/V written outside the timed region)
 *                                                 → 2·N²·Dh·H ÷ time
 *  attention_decode_tbps_n1m                      attention, one query row at past = N − 1 over N = 2^20 cache rows
 *                                                 → 2·N·Hkv·Dh·2 B ÷ time
 *  moe_expert_gemm_tflops_4k_tokens_per_expert    the whole moeExperts op (histogram + host sync, scatter, gather,
 *                                                 per-expert cuBLAS GEMMs, SwiGLU, fp32 combine), T 65536, K 2,
 *                                                 4096 slots per expert → E·4096·(2·D·2I + 2·I·D) ÷ time
 *
 * Timing (METHOD.md): two warm-up calls, one calibration call, then 5 groups of back-to-back calls between CUDA
 * events, each group ≥ 50 ms, and the median of the 5 per-call means. Checks: the output is poisoned with NaN bits
 * before the checked call and scanned for non-finite values afterwards; checkRelErr = max |Δ| / max |ref| over the
 * checked values (per compared array; the largest is reported).
 */
import type { AttentionSegment, LightningSegment, Tensor } from '../src/backend/backend.js';
import type { CudaBackend, CudaTensor } from '../src/backend/cuda/cuda-backend.js';
import { lightningSlopes } from '../src/model/slopes.js';
import { median } from './common.js';

export interface KernelResult {
  name: string;
  value: number;
  unit: string;
  /** max |Δ| / max |ref| of the checked slice against float64 (Infinity when an output was not finite). */
  checkRelErr: number;
  details: Record<string, number | string | number[]>;
}

export type Log = (s: string) => void;

/** A check above this is reported as FAIL (the figure is still timed and written). bf16 outputs land near 1e-3–5e-3. */
const CHECK_TOL = 2e-2;
const GROUPS = 5;
const MIN_GROUP_MS = 50;

// ------------------------------------------------------------------------------------------------ helpers


interface Timing {
  /** Median over the groups of the mean time per call. */
  ms: number;
  reps: number;
  groupsMs: number[];
}

/** CUDA-event timing of `run` (which only enqueues work, or syncs internally as the MoE op does). */
function timeEvents(b: CudaBackend, run: () => void, warmup = 2): Timing {
  const ctx = b.ctx;
  const e0 = ctx.createEvent(), e1 = ctx.createEvent();
  try {
    for (let i = 0; i < warmup; i++) run();
    b.synchronize();
    ctx.record(e0);
    run();
    ctx.record(e1);
    const one = ctx.elapsedMs(e0, e1);
    const reps = Math.max(1, Math.ceil(MIN_GROUP_MS / Math.max(one, 1e-3)));
    const groupsMs: number[] = [];
    for (let g = 0; g < GROUPS; g++) {
      b.synchronize();
      ctx.record(e0);
      for (let r = 0; r < reps; r++) run();
      ctx.record(e1);
      groupsMs.push(ctx.elapsedMs(e0, e1) / reps);
    }
    return { ms: median(groupsMs), reps, groupsMs };
  } finally {
    b.synchronize();
    ctx.destroyEvent(e0);
    ctx.destroyEvent(e1);
  }
}

/** NaN bits (0xFF bytes) in every element, so an element the op does not write fails the finiteness scan. */
function poison(b: CudaBackend, t: Tensor): void {
  const c = t as CudaTensor;
  b.ctx.memsetD8(c.ptr, 0xff, c.bytes);
}

/** Non-finite elements of a bf16 or f32 tensor, read back raw in 64 MB pieces (no float conversion). */
function countNonFinite(b: CudaBackend, t: Tensor): number {
  const c = t as CudaTensor;
  const eb = c.dtype === 'f32' ? 4 : 2;
  if (c.dtype !== 'f32' && c.dtype !== 'bf16') throw new Error(`countNonFinite: ${c.dtype}`);
  const chunk = (64 << 20) / eb;
  const b32 = eb === 4 ? new Uint32Array(chunk) : undefined;
  const b16 = eb === 2 ? new Uint16Array(chunk) : undefined;
  let bad = 0;
  for (let i = 0; i < c.size; i += chunk) {
    const n = Math.min(chunk, c.size - i);
    const src = c.ptr + BigInt(i * eb);
    if (b32) {
      const v = b32.subarray(0, n);
      b.download(v, src, n * 4);
      for (let j = 0; j < n; j++) if ((v[j] & 0x7f800000) === 0x7f800000) bad++;
    } else {
      const v = b16!.subarray(0, n);
      b.download(v, src, n * 2);
      for (let j = 0; j < n; j++) if ((v[j] & 0x7f80) === 0x7f80) bad++;
    }
  }
  return bad;
}

/** max |got − ref| / max |ref|; NaN anywhere → Infinity. */
function maxRel(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (got.length !== ref.length) throw new Error(`maxRel: ${got.length} vs ${ref.length} values`);
  let d = 0, r = 0;
  for (let i = 0; i < got.length; i++) {
    const x = Math.abs(got[i] - ref[i]);
    if (!(x <= Infinity)) return Infinity; // NaN
    if (x > d) d = x;
    const a = Math.abs(ref[i]);
    if (a > r) r = a;
  }
  return d / Math.max(r, 1e-300);
}

/** Accumulates got/ref pairs over several slices; value = max |Δ| / max |ref| over all of them. */
class RelErr {
  private d = 0;
  private r = 0;
  private nan = false;
  add(got: ArrayLike<number>, ref: ArrayLike<number>): void {
    if (got.length !== ref.length) throw new Error(`RelErr: ${got.length} vs ${ref.length} values`);
    for (let i = 0; i < got.length; i++) {
      const x = Math.abs(got[i] - ref[i]);
      if (!(x <= Infinity)) this.nan = true;
      else if (x > this.d) this.d = x;
      const a = Math.abs(ref[i]);
      if (a > this.r) this.r = a;
    }
  }
  get value(): number {
    return this.nan ? Infinity : this.d / Math.max(this.r, 1e-300);
  }
}

function verdict(err: number): string {
  return err <= CHECK_TOL ? 'pass' : 'FAIL';
}

const fmt = (x: number): string => (Number.isFinite(x) ? x.toExponential(2) : String(x));

/**
 * float64 lightning recurrence over `rows` tokens of a host qkv [rows, H·3·Dh] (per head q | k | v), from `init`
 * (f32 [H, Dh, Dh], zero when absent): S_t = e^(−s)·S_(t−1) + k_tᵀ v_t, o_t = q_t · S_t.
 */
export function lightningRef64(qkv: Float32Array, rows: number, H: number, Dh: number, slopes: Float32Array, init?: Float32Array): { out: Float64Array; state: Float64Array } {
  const out = new Float64Array(rows * H * Dh);
  const state = new Float64Array(H * Dh * Dh);
  if (init) for (let i = 0; i < state.length; i++) state[i] = init[i];
  const acc = new Float64Array(Dh);
  const rowStride = 3 * H * Dh;
  for (let h = 0; h < H; h++) {
    const dec = Math.exp(-slopes[h]);
    const s0 = h * Dh * Dh;
    for (let t = 0; t < rows; t++) {
      const qo = t * rowStride + h * 3 * Dh, ko = qo + Dh, vo = qo + 2 * Dh;
      acc.fill(0);
      for (let a = 0; a < Dh; a++) {
        const ka = qkv[ko + a], qa = qkv[qo + a];
        const row = s0 + a * Dh;
        for (let c = 0; c < Dh; c++) {
          const v = dec * state[row + c] + ka * qkv[vo + c];
          state[row + c] = v;
          acc[c] += qa * v;
        }
      }
      out.set(acc, (t * H + h) * Dh);
    }
  }
  return { out, state };
}

/** Rows [r0, r0 + n) of a 2-D-or-more tensor whose rows hold `rowElems` elements, as f32 on the host. */
function readRows(b: CudaBackend, t: Tensor, r0: number, n: number, rowElems: number): Float32Array {
  return b.toFloat32(b.view(t, [n, rowElems], r0 * rowElems));
}

/**
 * float64 decode step of every head of one sequence: S' = e^(−s)·S + kᵀv, o = q·S' (qkv row [H·3·Dh], state f32
 * [H, Dh, Dh]). Returns o [H·Dh] and S' [H, Dh, Dh].
 */
export function lightningDecodeRef64(qkv: Float32Array, state: Float32Array, H: number, Dh: number, slopes: Float32Array): { out: Float64Array; state: Float64Array } {
  const out = new Float64Array(H * Dh);
  const S = new Float64Array(H * Dh * Dh);
  for (let h = 0; h < H; h++) {
    const dec = Math.exp(-slopes[h]);
    const qo = h * 3 * Dh, ko = qo + Dh, vo = qo + 2 * Dh, so = h * Dh * Dh;
    for (let a = 0; a < Dh; a++) {
      for (let c = 0; c < Dh; c++) {
        const v = dec * state[so + a * Dh + c] + qkv[ko + a] * qkv[vo + c];
        S[so + a * Dh + c] = v;
        out[h * Dh + c] += qkv[qo + a] * v;
      }
    }
  }
  return { out, state: S };
}

/**
 * float64 softmax attention of one query row q [H·Dh] for `heads` over n cache rows [n, Hkv, Dh], streamed in pieces
 * of R rows from `read(r0, rows)` (an online softmax: running max, sum and output per head).
 */
export function streamingAttention64(
  q: Float32Array, heads: readonly number[], H: number, Hkv: number, Dh: number, n: number, R: number, scale: number,
  read: (r0: number, rows: number) => { k: Float32Array; v: Float32Array },
): Float64Array[] {
  const G = H / Hkv;
  const m = heads.map(() => -Infinity), l = heads.map(() => 0);
  const acc = heads.map(() => new Float64Array(Dh));
  const sc = new Float64Array(R);
  const qs = heads.map((h) => Float64Array.from(q.subarray(h * Dh, (h + 1) * Dh)));
  for (let r0 = 0; r0 < n; r0 += R) {
    const rows = Math.min(R, n - r0);
    const { k, v } = read(r0, rows);
    heads.forEach((h, i) => {
      const g = Math.floor(h / G);
      const qv = qs[i];
      let cmax = -Infinity;
      for (let j = 0; j < rows; j++) {
        const o = (j * Hkv + g) * Dh;
        let s = 0;
        for (let d = 0; d < Dh; d++) s += qv[d] * k[o + d];
        s *= scale;
        sc[j] = s;
        if (s > cmax) cmax = s;
      }
      const mNew = Math.max(m[i], cmax);
      const f = Math.exp(m[i] - mNew); // 0 on the first piece (m = −inf)
      const a = acc[i];
      for (let d = 0; d < Dh; d++) a[d] *= f;
      let li = l[i] * f;
      for (let j = 0; j < rows; j++) {
        const p = Math.exp(sc[j] - mNew);
        li += p;
        const o = (j * Hkv + g) * Dh;
        for (let d = 0; d < Dh; d++) a[d] += p * v[o + d];
      }
      l[i] = li;
      m[i] = mNew;
    });
  }
  return acc.map((a, i) => a.map((x) => x / l[i]));
}

/**
 * float64 MoE of a few tokens: out[t] = Σ_k w[t][k] · (silu(x·w1ᵀ) ⊙ (x·w3ᵀ)) · w2ᵀ of expert experts[t][k], with
 * no intermediate rounding. Expert weights are read in pieces of rows: w13Rows(e, r0, n) → f32 [n, D] (rows of
 * [2I, D]), w2Rows(e, r0, n) → f32 [n, I] (rows of [D, I]); each expert is read once for all tokens that use it.
 */
export function moeRef64(
  xs: readonly Float32Array[], experts: readonly (readonly number[])[], weights: readonly (readonly number[])[], D: number, I: number,
  w13Rows: (e: number, r0: number, n: number) => Float32Array, w2Rows: (e: number, r0: number, n: number) => Float32Array, chunk = 512,
): Float64Array[] {
  const ref = xs.map(() => new Float64Array(D));
  const all = [...new Set(experts.flat())].sort((a, c) => a - c);
  for (const e of all) {
    const users: { n: number; w: number }[] = [];
    experts.forEach((ek, n) => ek.forEach((x, k) => x === e && users.push({ n, w: weights[n][k] })));
    const hs = users.map(() => new Float64Array(2 * I));
    for (let r0 = 0; r0 < 2 * I; r0 += chunk) {
      const rows = Math.min(chunk, 2 * I - r0);
      const w = w13Rows(e, r0, rows);
      users.forEach(({ n }, u) => {
        const xv = xs[n];
        for (let r = 0; r < rows; r++) {
          let s = 0;
          const o = r * D;
          for (let d = 0; d < D; d++) s += xv[d] * w[o + d];
          hs[u][r0 + r] = s;
        }
      });
    }
    const acts = hs.map((h) => {
      const a = new Float64Array(I);
      for (let i = 0; i < I; i++) a[i] = (h[i] / (1 + Math.exp(-h[i]))) * h[I + i];
      return a;
    });
    for (let r0 = 0; r0 < D; r0 += chunk) {
      const rows = Math.min(chunk, D - r0);
      const w = w2Rows(e, r0, rows);
      users.forEach(({ n, w: wt }, u) => {
        const a = acts[u];
        for (let r = 0; r < rows; r++) {
          let s = 0;
          const o = r * I;
          for (let i = 0; i < I; i++) s += a[i] * w[o + i];
          ref[n][r0 + r] += wt * s;
        }
      });
    }
  }
  return ref;
}

// ------------------------------------------------------------------------------------------------ metrics

function lightningPrefill(b: CudaBackend, log: Log): KernelResult {
  const name = 'lightning_prefill_ms_h8_d128_n1m';
  const N = 1 << 20, H = 8, Dh = 128, B = 256, W = 4096;
  const row = 3 * H * Dh, orow = H * Dh;
  const slopesHost = lightningSlopes(H, 0, 80);
  const owned: Tensor[] = [];
  const keep = (t: Tensor): Tensor => (owned.push(t), t);
  try {
    const qkv = keep(b.alloc([N, row], 'bf16'));
    b.fillRandom(qkv, 101, 0.1);
    const out = keep(b.alloc([N, orow], 'bf16'));
    const state = keep(b.alloc([H, Dh, Dh], 'f32'));
    const slopes = keep(b.upload([H], 'f32', slopesHost));
    const segs: LightningSegment[] = [{ start: 0, length: N, state }];
    const run = (): void => {
      b.fillZero(state);
      b.lightningAttention(out, qkv, slopes, segs, B);
    };

    // -- check 1: the full 1M run; its first W and last W output rows and its final state
    poison(b, out);
    run();
    b.synchronize();
    const nonFinite = countNonFinite(b, out) + countNonFinite(b, state);
    const gotHead = readRows(b, out, 0, W, orow);
    const gotTail = readRows(b, out, N - W, W, orow);
    const gotFinal = b.toFloat32(state);
    // -- check 2: the first W tokens as a call of their own (out and final state)
    const out2 = keep(b.alloc([W, orow], 'bf16'));
    const state2 = keep(b.zeros([H, Dh, Dh], 'f32'));
    poison(b, out2);
    b.lightningAttention(out2, b.view(qkv, [W, row]), slopes, [{ start: 0, length: W, state: state2 }], B);
    const got4kOut = b.toFloat32(out2);
    const got4kState = b.toFloat32(state2);
    // -- the state entering the last W tokens (our op on rows [0, N − W); overwrites out's prefix, read above)
    const state3 = keep(b.zeros([H, Dh, Dh], 'f32'));
    b.lightningAttention(b.view(out, [N - W, orow]), b.view(qkv, [N - W, row]), slopes, [{ start: 0, length: N - W, state: state3 }], B);
    const midState = b.toFloat32(state3);
    // -- float64 references
    const ref1 = lightningRef64(readRows(b, qkv, 0, W, row), W, H, Dh, slopesHost);
    const ref2 = lightningRef64(readRows(b, qkv, N - W, W, row), W, H, Dh, slopesHost, midState);
    const errs = {
      head_out_rel_err: maxRel(gotHead, ref1.out),
      run4k_out_rel_err: maxRel(got4kOut, ref1.out),
      run4k_state_rel_err: maxRel(got4kState, ref1.state),
      tail_out_rel_err: maxRel(gotTail, ref2.out),
      final_state_rel_err: maxRel(gotFinal, ref2.state),
    };
    const checkRelErr = nonFinite > 0 ? Infinity : Math.max(...Object.values(errs));
    log(`${name}: check ${verdict(checkRelErr)} ${fmt(checkRelErr)} (${Object.entries(errs).map(([k, v]) => `${k} ${fmt(v)}`).join(', ')}; non-finite ${nonFinite})`);

    const t = timeEvents(b, run);
    const intra = 2 * N * B * Dh * H, inter = 4 * N * Dh * Dh * H;
    const bytes = N * row * 2 + N * orow * 2;
    log(`${name}: ${t.ms.toFixed(3)} ms (${t.reps} reps × ${GROUPS} groups: ${t.groupsMs.map((x) => x.toFixed(3)).join(' ')}); ${((intra + inter) / (t.ms / 1e3) / 1e12).toFixed(1)} TFLOP/s block-algorithm FLOPs, ${(bytes / (t.ms / 1e3) / 1e12).toFixed(2)} TB/s of qkv + out`);
    return {
      name, value: t.ms, unit: 'ms', checkRelErr,
      details: {
        check: verdict(checkRelErr), ...errs, non_finite: nonFinite, check_rows: W,
        reps: t.reps, groups_ms: t.groupsMs,
        flops_block_algorithm: intra + inter, tflops: (intra + inter) / (t.ms / 1e3) / 1e12,
        bytes_qkv_out: bytes, tbps_qkv_out: bytes / (t.ms / 1e3) / 1e12,
        timed: 'fillZero(state) + lightningAttention(out, qkv, slopes, [{0, 2^20, state}], 256)',
      },
    };
  } finally {
    for (const t of owned) b.free(t);
  }
}

function lightningDecode(b: CudaBackend, log: Log): KernelResult {
  const name = 'lightning_decode_tbps_h64_b256';
  const S = 256, H = 64, Dh = 128;
  const row = 3 * H * Dh, orow = H * Dh, st = H * Dh * Dh;
  const slopesHost = lightningSlopes(H, 0, 80);
  const owned: Tensor[] = [];
  const keep = (t: Tensor): Tensor => (owned.push(t), t);
  try {
    const qkv = keep(b.alloc([S, row], 'bf16'));
    b.fillRandom(qkv, 102, 0.1);
    const states = keep(b.alloc([S, H, Dh, Dh], 'f32'));
    b.fillRandom(states, 103, 0.01);
    const out = keep(b.alloc([S, orow], 'bf16'));
    const slopes = keep(b.upload([H], 'f32', slopesHost));
    const segs: LightningSegment[] = Array.from({ length: S }, (_, i) => ({ start: i, length: 1, state: b.view(states, [H, Dh, Dh], i * st) }));
    const run = (): void => b.lightningAttention(out, qkv, slopes, segs, 256);

    // -- check: every head of sequences 0, 1, 128, 255 (states before and after, outputs)
    const seqs = [0, 1, 128, 255];
    const before = seqs.map((i) => b.toFloat32(b.view(states, [st], i * st)));
    const q = b.toFloat32(qkv);
    poison(b, out);
    run();
    b.synchronize();
    const nonFinite = countNonFinite(b, out);
    const gotOut = b.toFloat32(out);
    const after = seqs.map((i) => b.toFloat32(b.view(states, [st], i * st)));
    const eOut = new RelErr(), eState = new RelErr();
    seqs.forEach((i, n) => {
      const ref = lightningDecodeRef64(q.subarray(i * row, (i + 1) * row), before[n], H, Dh, slopesHost);
      eState.add(after[n], ref.state);
      eOut.add(gotOut.subarray(i * orow, (i + 1) * orow), ref.out);
    });
    const errs = { out_rel_err: eOut.value, state_rel_err: eState.value };
    const checkRelErr = nonFinite > 0 ? Infinity : Math.max(errs.out_rel_err, errs.state_rel_err);
    log(`${name}: check ${verdict(checkRelErr)} ${fmt(checkRelErr)} (out ${fmt(errs.out_rel_err)}, state ${fmt(errs.state_rel_err)} on sequences ${seqs.join(', ')} × ${H} heads; non-finite ${nonFinite})`);

    const t = timeEvents(b, run);
    const bytes = 2 * S * st * 4 + S * row * 2 + S * orow * 2;
    const tbps = bytes / (t.ms / 1e3) / 1e12;
    log(`${name}: ${tbps.toFixed(3)} TB/s (${(t.ms * 1e3).toFixed(1)} µs per call, ${t.reps} reps × ${GROUPS} groups: ${t.groupsMs.map((x) => (x * 1e3).toFixed(1)).join(' ')} µs)`);
    return {
      name, value: tbps, unit: 'TB/s', checkRelErr,
      details: {
        check: verdict(checkRelErr), ...errs, non_finite: nonFinite, ms: t.ms, reps: t.reps, groups_ms: t.groupsMs, bytes,
        timed: 'lightningAttention(out, qkv, slopes, 256 one-token segments, states in place)',
      },
    };
  } finally {
    for (const t of owned) b.free(t);
  }
}

/** float64 softmax attention of one query over keys j = 0..n−1 of a host pool [rows, Hkv, Dh] (kv head g). */
export function attnRow64(q: Float32Array, qOff: number, K: Float32Array, V: Float32Array, g: number, Hkv: number, n: number, Dh: number, scale: number): Float64Array {
  const sc = new Float64Array(n);
  let m = -Infinity;
  for (let j = 0; j < n; j++) {
    const o = (j * Hkv + g) * Dh;
    let acc = 0;
    for (let d = 0; d < Dh; d++) acc += q[qOff + d] * K[o + d];
    sc[j] = acc * scale;
    if (sc[j] > m) m = sc[j];
  }
  const out = new Float64Array(Dh);
  let sum = 0;
  for (let j = 0; j < n; j++) {
    const p = Math.exp(sc[j] - m);
    sum += p;
    const o = (j * Hkv + g) * Dh;
    for (let d = 0; d < Dh; d++) out[d] += p * V[o + d];
  }
  for (let d = 0; d < Dh; d++) out[d] /= sum;
  return out;
}

function attentionPrefill(b: CudaBackend, log: Log): KernelResult {
  const name = 'attention_prefill_tflops_h64_kv8_d128_n16k';
  const N = 16384, H = 64, Hkv = 8, Dh = 128, G = H / Hkv;
  const scale = 1 / Math.sqrt(Dh);
  const owned: Tensor[] = [];
  const keep = (t: Tensor): Tensor => (owned.push(t), t);
  try {
    const q = keep(b.alloc([N, H, Dh], 'bf16'));
    b.fillRandom(q, 104, 1);
    // Identity block table: pool row r = cache row r, so filling the pools [N, Hkv, Dh] directly gives the METRICS
    // k / v tensors element for element.
    const kPool = keep(b.alloc([N, Hkv, Dh], 'bf16'));
    const vPool = keep(b.alloc([N, Hkv, Dh], 'bf16'));
    b.fillRandom(kPool, 105, 1);
    b.fillRandom(vPool, 106, 1);
    const table = keep(b.upload([N / 64], 'i32', Int32Array.from({ length: N / 64 }, (_, i) => i)));
    const out = keep(b.alloc([N, H, Dh], 'bf16'));
    const segs: AttentionSegment[] = [{ start: 0, length: N, past: 0, k: kPool, v: vPool, blockTable: table }];
    const run = (): void => b.attention(out, q, segs, scale);

    // -- check: rows at tile edges and spread over the sequence, one query head per kv head
    poison(b, out);
    run();
    b.synchronize();
    const nonFinite = countNonFinite(b, out);
    const K = b.toFloat32(kPool), V = b.toFloat32(vPool);
    const rows = [0, 1, 63, 64, 65, 127, 255, 1000, 4095, 4096, 8191, 12345, 16319, 16320, 16382, 16383];
    const heads = Array.from({ length: Hkv }, (_, g) => g * G + (g % G)); // 0, 9, 18, …, 63
    const e = new RelErr();
    for (const r of rows) {
      const qr = readRows(b, q, r, 1, H * Dh);
      const or = readRows(b, out, r, 1, H * Dh);
      for (const h of heads) e.add(or.subarray(h * Dh, (h + 1) * Dh), attnRow64(qr, h * Dh, K, V, Math.floor(h / G), Hkv, r + 1, Dh, scale));
    }
    const checkRelErr = nonFinite > 0 ? Infinity : e.value;
    log(`${name}: check ${verdict(checkRelErr)} ${fmt(checkRelErr)} (${rows.length} rows × heads ${heads.join(', ')}; non-finite ${nonFinite})`);

    const t = timeEvents(b, run);
    const flops = 2 * N * N * Dh * H;
    const tflops = flops / (t.ms / 1e3) / 1e12;
    log(`${name}: ${tflops.toFixed(1)} TFLOP/s (${t.ms.toFixed(3)} ms, ${t.reps} reps × ${GROUPS} groups: ${t.groupsMs.map((x) => x.toFixed(3)).join(' ')})`);
    return {
      name, value: tflops, unit: 'TFLOP/s', checkRelErr,
      details: {
        check: verdict(checkRelErr), non_finite: nonFinite, check_rows: rows, check_heads: heads, ms: t.ms, reps: t.reps, groups_ms: t.groupsMs, flops,
        timed: 'attention(out, q, [{start 0, length 16384, past 0, paged pools, identity table}], 1/sqrt(128))',
      },
    };
  } finally {
    for (const t of owned) b.free(t);
  }
}

function attentionDecode(b: CudaBackend, log: Log): KernelResult {
  const name = 'attention_decode_tbps_n1m';
  const N = 1 << 20, H = 64, Hkv = 8, Dh = 128, G = H / Hkv;
  const scale = 1 / Math.sqrt(Dh);
  const owned: Tensor[] = [];
  const keep = (t: Tensor): Tensor => (owned.push(t), t);
  try {
    const q = keep(b.alloc([1, H, Dh], 'bf16'));
    b.fillRandom(q, 107, 1);
    const kPool = keep(b.alloc([N, Hkv, Dh], 'bf16'));
    const vPool = keep(b.alloc([N, Hkv, Dh], 'bf16'));
    b.fillRandom(kPool, 108, 1);
    b.fillRandom(vPool, 109, 1);
    const table = keep(b.upload([N / 64], 'i32', Int32Array.from({ length: N / 64 }, (_, i) => i)));
    const out = keep(b.alloc([1, H, Dh], 'bf16'));
    // One query row at position N − 1: it attends to cache rows [0, N).
    const segs: AttentionSegment[] = [{ start: 0, length: 1, past: N - 1, k: kPool, v: vPool, blockTable: table }];
    const run = (): void => b.attention(out, q, segs, scale);

    // -- check: one query head per kv head, float64 online softmax streamed over the cache in 32K-row pieces
    poison(b, out);
    run();
    b.synchronize();
    const got = b.toFloat32(out);
    let nonFinite = 0;
    for (const x of got) if (!Number.isFinite(x)) nonFinite++;
    const qh = b.toFloat32(q);
    const heads = [0, 27, 45, 63]; // kv heads 0, 3, 5, 7
    // Raw bf16 pieces of the pools, converted to f32 only at the kv heads the checked query heads read (the others
    // stay 0 and are never read): 4 GB cross the bus once, without a full conversion.
    const R = 32768, rowElems = Hkv * Dh;
    const raw = new Uint16Array(R * rowElems);
    const kf = new Float32Array(R * rowElems), vf = new Float32Array(R * rowElems);
    const groups = [...new Set(heads.map((h) => Math.floor(h / G)))];
    const readConverted = (t: Tensor, r0: number, n: number, dst: Float32Array): Float32Array => {
      const dst32 = new Uint32Array(dst.buffer, 0, n * rowElems);
      b.download(raw.subarray(0, n * rowElems), (t as CudaTensor).ptr + BigInt(r0 * rowElems * 2), n * rowElems * 2);
      for (let j = 0; j < n; j++) {
        for (const g of groups) {
          const o = (j * Hkv + g) * Dh;
          for (let d = 0; d < Dh; d++) dst32[o + d] = raw[o + d] << 16;
        }
      }
      return dst.subarray(0, n * rowElems);
    };
    const ref = streamingAttention64(qh, heads, H, Hkv, Dh, N, R, scale, (r0, n) => ({ k: readConverted(kPool, r0, n, kf), v: readConverted(vPool, r0, n, vf) }));
    const e = new RelErr();
    heads.forEach((h, i) => e.add(got.subarray(h * Dh, (h + 1) * Dh), ref[i]));
    const checkRelErr = nonFinite > 0 ? Infinity : e.value;
    log(`${name}: check ${verdict(checkRelErr)} ${fmt(checkRelErr)} (heads ${heads.join(', ')} over ${N} keys; non-finite ${nonFinite})`);

    const t = timeEvents(b, run);
    const bytes = 2 * N * Hkv * Dh * 2;
    const tbps = bytes / (t.ms / 1e3) / 1e12;
    log(`${name}: ${tbps.toFixed(3)} TB/s (${(t.ms * 1e3).toFixed(1)} µs per call, ${t.reps} reps × ${GROUPS} groups: ${t.groupsMs.map((x) => (x * 1e3).toFixed(1)).join(' ')} µs)`);
    return {
      name, value: tbps, unit: 'TB/s', checkRelErr,
      details: {
        check: verdict(checkRelErr), non_finite: nonFinite, check_heads: heads, ms: t.ms, reps: t.reps, groups_ms: t.groupsMs, bytes,
        timed: 'attention(out, q, [{start 0, length 1, past 2^20 − 1, paged pools, identity table}], 1/sqrt(128)): split-K partial + reduce',
      },
    };
  } finally {
    for (const t of owned) b.free(t);
  }
}

function moeExperts(b: CudaBackend, log: Log): KernelResult {
  const name = 'moe_expert_gemm_tflops_4k_tokens_per_expert';
  const E = 32, D = 6144, I = 9216, T = 65536, K = 2;
  const owned: Tensor[] = [];
  const keep = (t: Tensor): Tensor => (owned.push(t), t);
  try {
    const x = keep(b.alloc([T, D], 'bf16'));
    b.fillRandom(x, 110, 1);
    const w13 = keep(b.alloc([E, 2 * I, D], 'bf16'));
    b.fillRandom(w13, 111, 0.02);
    const w2 = keep(b.alloc([E, D, I], 'bf16'));
    b.fillRandom(w2, 112, 0.02);
    const idxHost = new Int32Array(T * K);
    for (let t = 0; t < T; t++) {
      idxHost[t * K] = t % E;
      idxHost[t * K + 1] = (t + 1) % E;
    }
    const idx = keep(b.upload([T, K], 'i32', idxHost));
    const wts = keep(b.upload([T, K], 'f32', new Float32Array(T * K).fill(0.5)));
    const out = keep(b.alloc([T, D], 'f32'));
    const run = (): void => b.moeExperts(out, x, idx, wts, w13, w2);

    // -- check: tokens 0, 31, 32, 65535 (experts {0, 1}, {31, 0}, {0, 1}, {31, 0}) in float64
    poison(b, out);
    run();
    b.synchronize();
    const nonFinite = countNonFinite(b, out);
    const tokens = [0, 31, 32, T - 1];
    const xs = tokens.map((t) => readRows(b, x, t, 1, D));
    const ref = moeRef64(xs, tokens.map((t) => [t % E, (t + 1) % E]), tokens.map(() => [0.5, 0.5]), D, I, (e, r0, n) => readRows(b, w13, e * 2 * I + r0, n, D), (e, r0, n) => readRows(b, w2, e * D + r0, n, I));
    const e = new RelErr();
    tokens.forEach((t, n) => e.add(readRows(b, out, t, 1, D), ref[n]));
    const checkRelErr = nonFinite > 0 ? Infinity : e.value;
    log(`${name}: check ${verdict(checkRelErr)} ${fmt(checkRelErr)} (tokens ${tokens.join(', ')}; non-finite ${nonFinite})`);

    const t = timeEvents(b, run);
    const flops = E * 4096 * (2 * D * 2 * I + 2 * I * D);
    const tflops = flops / (t.ms / 1e3) / 1e12;
    log(`${name}: ${tflops.toFixed(1)} TFLOP/s (${t.ms.toFixed(2)} ms, ${t.reps} reps × ${GROUPS} groups: ${t.groupsMs.map((x) => x.toFixed(2)).join(' ')})`);
    return {
      name, value: tflops, unit: 'TFLOP/s', checkRelErr,
      details: {
        check: verdict(checkRelErr), non_finite: nonFinite, check_tokens: tokens, ms: t.ms, reps: t.reps, groups_ms: t.groupsMs, flops,
        timed: 'moeExperts(out f32, x, indices, weights, w13, w2): histogram + host sync, scatter, gather, 2 × 32 cuBLAS GEMMs, SwiGLU, fp32 combine',
      },
    };
  } finally {
    for (const t of owned) b.free(t);
  }
}

const METRICS: readonly { name: string; run: (b: CudaBackend, log: Log) => KernelResult }[] = [
  { name: 'lightning_prefill_ms_h8_d128_n1m', run: lightningPrefill },
  { name: 'lightning_decode_tbps_h64_b256', run: lightningDecode },
  { name: 'attention_prefill_tflops_h64_kv8_d128_n16k', run: attentionPrefill },
  { name: 'attention_decode_tbps_n1m', run: attentionDecode },
  { name: 'moe_expert_gemm_tflops_4k_tokens_per_expert', run: moeExperts },
];

/** The kernel metric names, in run order. */
export const KERNEL_METRICS: readonly string[] = METRICS.map((m) => m.name);

/**
 * Runs the selected kernel metrics (all by default) on `b`, freeing each metric's tensors before the next and
 * releasing the allocator's cache at the end. A metric that throws is logged and left out (the others still run);
 * its error is returned in `errors`.
 */
export async function kernelBenchmarks(
  b: CudaBackend,
  log: Log,
  want: (name: string) => boolean = () => true,
  errors: string[] = [],
): Promise<KernelResult[]> {
  const results: KernelResult[] = [];
  for (const m of METRICS) {
    if (!want(m.name)) continue;
    const t0 = performance.now();
    try {
      results.push(m.run(b, log));
    } catch (e) {
      const msg = `${m.name}: ${(e as Error).stack ?? String(e)}`;
      log(`FAILED ${msg}`);
      errors.push(msg);
    }
    b.allocator.releaseCache();
    log(`${m.name}: ${((performance.now() - t0) / 1000).toFixed(1)} s in all (allocation, fill, check, timing)`);
  }
  return results;
}
