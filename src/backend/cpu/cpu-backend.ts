/**
 * The CPU backend: plain-loop fp32 implementations of every op in backend.ts. Tensors are stored as f32; one
 * allocated as bf16 holds bf16-rounded values (so bf16 weight storage can be emulated exactly). It is the numerical reference the
 * CUDA backend is tested against, and it runs the fixture models in CI. All math is fp32 storage with float64
 * accumulation; no op allocates per element (scratch buffers are reused across calls).
 */

import { KV_BLOCK_SIZE, type AttentionSegment, type Backend, type DType, type LightningSegment, type NormAfter, type Tensor } from '../backend.js';
import type { StDType } from '../../weights/safetensors.js';
import { decodeToFloat32, roundBf16 } from '../../util/dtype.js';
import { ShapeError, UnsupportedError } from '../../util/errors.js';
import { CpuTensor, asCpu, checkShape, f32, i32, numel } from './tensor.js';
import { matmulNT } from './matmul.js';
import { lightningDecodeHead, lightningPrefillHead, lightningScratch, type LightningScratch } from './lightning.js';
import { attentionSegment, ropeInPlace } from './attention.js';
import { moeExperts, moeRoute, type MoeScratch } from './moe.js';

class ScratchPool implements MoeScratch {
  private readonly pool = new Map<string, Float32Array | Int32Array | Float64Array>();
  f32(name: string, size: number): Float32Array {
    return this.get(name, size, Float32Array);
  }
  i32(name: string, size: number): Int32Array {
    return this.get(name, size, Int32Array);
  }
  f64(name: string, size: number): Float64Array {
    return this.get(name, size, Float64Array);
  }
  private get<A extends Float32Array | Int32Array | Float64Array>(name: string, size: number, Ctor: new (n: number) => A): A {
    let a = this.pool.get(name) as A | undefined;
    if (!a || a.length < size) {
      a = new Ctor(Math.max(size, a ? a.length * 2 : 0));
      this.pool.set(name, a);
    }
    return a.subarray(0, size) as A;
  }
}

export class CpuBackend implements Backend {
  readonly name = 'cpu';
  private readonly scratch = new ScratchPool();
  private lightningScratchCache: { key: string; s: LightningScratch } | undefined;

  // ---- memory ----
  alloc(shape: readonly number[], dtype: DType): Tensor {
    return this.zeros(shape, dtype);
  }

  zeros(shape: readonly number[], dtype: DType): Tensor {
    for (const s of shape) {
      if (!Number.isSafeInteger(s) || s < 0) throw new ShapeError(`invalid tensor shape [${shape.join(', ')}]`);
    }
    const n = numel(shape);
    const storage = dtype === 'i32' ? new Int32Array(n) : new Float32Array(n);
    return new CpuTensor([...shape], dtype, storage, 0);
  }

  view(t: Tensor, shape: readonly number[], offset = 0): Tensor {
    const c = asCpu(t, 'view');
    if (offset < 0 || offset + numel(shape) > c.size) {
      throw new ShapeError(`view [${shape.join(', ')}] at +${offset} does not fit in a tensor of shape [${c.shape.join(', ')}]`);
    }
    return new CpuTensor([...shape], c.dtype, c.storage, c.offset + offset);
  }

  upload(shape: readonly number[], dtype: DType, data: Float32Array | Int32Array): Tensor {
    const t = this.zeros(shape, dtype) as CpuTensor;
    if (data.length !== t.size) throw new ShapeError(`upload: ${data.length} values for shape [${shape.join(', ')}]`);
    t.storage.set(data);
    return t;
  }

  scratchUpload(shape: readonly number[], dtype: DType, data: Float32Array | Int32Array): Tensor {
    return this.upload(shape, dtype, data);
  }

  beginStep(): void {
    // Nothing to recycle: the garbage collector owns CPU memory.
  }

  writeBytes(t: Tensor, offset: number, bytes: Uint8Array, src: StDType): void {
    const c = asCpu(t, 'writeBytes');
    if (c.dtype === 'i32') throw new UnsupportedError('writeBytes into an i32 tensor');
    const dst = c.data;
    const n = decodeToFloat32(bytes, src, dst, offset);
    // A bf16 tensor on the CPU holds bf16-representable values (bf16 weight storage, computed in fp32).
    if (c.dtype === 'bf16') for (let i = offset; i < offset + n; i++) dst[i] = roundBf16(dst[i]);
  }

  writeInt32(t: Tensor, offset: number, values: Int32Array): void {
    const dst = i32(t, 'writeInt32');
    if (offset < 0 || offset + values.length > dst.length) throw new ShapeError(`writeInt32: ${values.length} values at +${offset} into ${dst.length}`);
    dst.set(values, offset);
  }

  fillZero(t: Tensor): void {
    const c = asCpu(t, 'fillZero');
    c.storage.fill(0, c.offset, c.offset + c.size);
  }

  copy(dst: Tensor, src: Tensor): void {
    const d = asCpu(dst, 'copy dst'), s = asCpu(src, 'copy src');
    if (d.size !== s.size) throw new ShapeError(`copy: ${s.size} elements into ${d.size}`);
    d.storage.set(s.storage.subarray(s.offset, s.offset + s.size), d.offset);
  }

  toFloat32(t: Tensor): Float32Array {
    const c = asCpu(t, 'toFloat32');
    return c.storage instanceof Float32Array ? c.data.slice() : Float32Array.from(c.ints);
  }

  free(_t: Tensor): void {
    // The garbage collector owns CPU memory.
  }

  // ---- ops ----
  embedding(out: Tensor, table: Tensor, ids: Tensor): void {
    const [V, D] = table.shape as [number, number];
    const idx = i32(ids, 'embedding ids');
    const T = idx.length;
    const o = f32(out, 'embedding out', [T, D]);
    const w = f32(table, 'embedding table');
    for (let t = 0; t < T; t++) {
      const id = idx[t];
      if (id < 0 || id >= V) throw new ShapeError(`embedding: token id ${id} is outside the vocabulary [0, ${V})`);
      o.set(w.subarray(id * D, id * D + D), t * D);
    }
  }

  linear(out: Tensor, x: Tensor, w: Tensor): void {
    const [N, K] = w.shape as [number, number];
    const xs = f32(x, 'linear x');
    const T = x.shape[0];
    checkShape(x, 'linear x', [T, K]);
    const o = f32(out, 'linear out', [T, N]);
    matmulNT(o, 0, xs, 0, f32(w, 'linear w'), 0, T, N, K);
  }

  rmsNorm(out: Tensor, x: Tensor, w: Tensor, eps: number): void {
    const C = w.shape[0];
    const xs = f32(x, 'rmsNorm x');
    const T = xs.length / C;
    const o = f32(out, 'rmsNorm out', [T, C]);
    const ws = f32(w, 'rmsNorm w', [C]);
    for (let t = 0; t < T; t++) {
      const base = t * C;
      let ss = 0;
      for (let c = 0; c < C; c++) ss += xs[base + c] * xs[base + c];
      const r = 1 / Math.sqrt(ss / C + eps);
      for (let c = 0; c < C; c++) o[base + c] = ws[c] * (xs[base + c] * r);
    }
  }

  sumSquares(ss: Tensor, x: Tensor): void {
    const T = ss.shape[0];
    const out = f32(ss, 'sumSquares ss', [T]);
    const xs = f32(x, 'sumSquares x');
    const C = xs.length / T;
    for (let t = 0; t < T; t++) {
      let acc = 0;
      for (let c = 0; c < C; c++) acc += xs[t * C + c] * xs[t * C + c];
      out[t] = acc;
    }
  }

  rmsNormSumSquares(out: Tensor, x: Tensor, w: Tensor, ss: Tensor, count: number, eps: number): void {
    const C = w.shape[0];
    const xs = f32(x, 'rmsNormSumSquares x');
    const T = xs.length / C;
    const o = f32(out, 'rmsNormSumSquares out', [T, C]);
    const ws = f32(w, 'rmsNormSumSquares w', [C]);
    const s = f32(ss, 'rmsNormSumSquares ss', [T]);
    for (let t = 0; t < T; t++) {
      const r = 1 / Math.sqrt(s[t] / count + eps);
      for (let c = 0; c < C; c++) o[t * C + c] = ws[c] * (xs[t * C + c] * r);
    }
  }

  residualAdd(out: Tensor, residual: Tensor, alpha: number, branch: Tensor, beta: number): void {
    const o = f32(out, 'residualAdd out');
    const r = f32(residual, 'residualAdd residual', out.shape);
    const b = f32(branch, 'residualAdd branch', out.shape);
    for (let i = 0; i < o.length; i++) o[i] = r[i] * alpha + b[i] * beta;
  }

  postnormResidual(out: Tensor, x: Tensor, w: Tensor, eps: number, alpha: number, branch: Tensor, beta: number, then?: NormAfter): void {
    const C = w.shape[0];
    const xs = f32(x, 'postnormResidual x');
    const T = xs.length / C;
    const o = f32(out, 'postnormResidual out', [T, C]);
    const b = f32(branch, 'postnormResidual branch', [T, C]);
    const ws = f32(w, 'postnormResidual w', [C]);
    for (let t = 0; t < T; t++) {
      const base = t * C;
      let ss = 0;
      for (let c = 0; c < C; c++) ss += xs[base + c] * xs[base + c];
      const r = 1 / Math.sqrt(ss / C + eps);
      for (let c = 0; c < C; c++) o[base + c] = ws[c] * (xs[base + c] * r) * alpha + b[base + c] * beta;
    }
    for (const n of then?.outs ?? []) this.rmsNorm(n, out, then!.w, then!.eps);
  }

  siluInPlace(x: Tensor): void {
    const xs = f32(x, 'silu x');
    for (let i = 0; i < xs.length; i++) {
      const v = xs[i];
      xs[i] = v / (1 + Math.exp(-v));
    }
  }

  sigmoidMul(out: Tensor, gate: Tensor, x: Tensor): void {
    const o = f32(out, 'sigmoidMul out');
    const g = f32(gate, 'sigmoidMul gate', out.shape);
    const xs = f32(x, 'sigmoidMul x', out.shape);
    for (let i = 0; i < o.length; i++) o[i] = xs[i] / (1 + Math.exp(-g[i]));
  }

  gatherRows(out: Tensor, x: Tensor, rows: Tensor): void {
    const C = x.shape[x.shape.length - 1];
    const xs = f32(x, 'gatherRows x');
    const idx = i32(rows, 'gatherRows rows');
    const o = f32(out, 'gatherRows out', [idx.length, C]);
    const R = xs.length / C;
    for (let r = 0; r < idx.length; r++) {
      const src = idx[r];
      if (src < 0 || src >= R) throw new ShapeError(`gatherRows: row ${src} outside [0, ${R})`);
      o.set(xs.subarray(src * C, src * C + C), r * C);
    }
  }

  rope(x: Tensor, positions: Tensor, rotaryDim: number, theta: number): void {
    const [T, nHeads, Dh] = x.shape as [number, number, number];
    const pos = i32(positions, 'rope positions', [T]);
    ropeInPlace(f32(x, 'rope x', [T, nHeads, Dh]), pos, T, nHeads, Dh, rotaryDim, theta);
  }

  lightningAttention(out: Tensor, qkv: Tensor, slopes: Tensor, segments: readonly LightningSegment[], blockSize: number): void {
    const H = slopes.shape[0];
    const T = qkv.shape[0];
    const Dh = qkv.shape[1] / (3 * H);
    const q = f32(qkv, 'lightning qkv', [T, 3 * H * Dh]);
    const o = f32(out, 'lightning out', [T, H * Dh]);
    const s = f32(slopes, 'lightning slopes', [H]);
    const scratch = this.lightningScratchFor(Dh, blockSize);
    for (const seg of segments) {
      const S = f32(seg.state, 'lightning state', [H, Dh, Dh]);
      for (let h = 0; h < H; h++) {
        if (seg.length === 1) {
          lightningDecodeHead(o, seg.start * H * Dh + h * Dh, q, seg.start * 3 * H * Dh + h * 3 * Dh, S, h * Dh * Dh, s[h], Dh, scratch.acc);
        } else {
          lightningPrefillHead(o, H * Dh, h * Dh, q, 3 * H * Dh, h * 3 * Dh, seg.start, seg.length, S, h * Dh * Dh, s[h], Dh, blockSize, scratch);
        }
      }
    }
  }

  kvAppend(k: Tensor, v: Tensor, segments: readonly AttentionSegment[]): void {
    const [T, Hkv, Dh] = k.shape as [number, number, number];
    const ks = f32(k, 'kvAppend k', [T, Hkv, Dh]);
    const vs = f32(v, 'kvAppend v', [T, Hkv, Dh]);
    const row = Hkv * Dh;
    for (const seg of segments) {
      const kc = f32(seg.k, 'k cache'), vc = f32(seg.v, 'v cache');
      const rows = pagedRows(seg, kc.length / row);
      for (let i = 0; i < seg.length; i++) {
        const src = (seg.start + i) * row, dst = rows[seg.past + i] * row;
        kc.set(ks.subarray(src, src + row), dst);
        vc.set(vs.subarray(src, src + row), dst);
      }
    }
  }

  attention(out: Tensor, q: Tensor, segments: readonly AttentionSegment[], scale: number): void {
    const [T, H, Dh] = q.shape as [number, number, number];
    const qs = f32(q, 'attention q', [T, H, Dh]);
    const o = f32(out, 'attention out', [T, H, Dh]);
    for (const seg of segments) {
      const Hkv = seg.k.shape[1];
      const row = Hkv * Dh;
      const kc = f32(seg.k, 'k cache'), vc = f32(seg.v, 'v cache');
      // Gather the sequence's rows out of the pools into contiguous scratch (O(n·Hkv·Dh), small next to the
      // O(n·H·Dh) attention itself), then run the contiguous kernel.
      const rows = pagedRows(seg, kc.length / row);
      const n = seg.past + seg.length;
      const kg = this.scratch.f32('attn.k', n * row), vg = this.scratch.f32('attn.v', n * row);
      for (let r = 0; r < n; r++) {
        const src = rows[r] * row;
        kg.set(kc.subarray(src, src + row), r * row);
        vg.set(vc.subarray(src, src + row), r * row);
      }
      attentionSegment(o, qs, kg, vg, seg.start, seg.length, seg.past, H, Hkv, Dh, scale, this.scratch);
    }
  }

  moeRoute(indices: Tensor, weights: Tensor, logits: Tensor): void {
    const [T, E] = logits.shape as [number, number];
    const K = indices.shape[1];
    moeRoute(i32(indices, 'moeRoute indices', [T, K]), f32(weights, 'moeRoute weights', [T, K]), f32(logits, 'moeRoute logits', [T, E]), T, E, K);
  }

  moeExperts(out: Tensor, x: Tensor, indices: Tensor, weights: Tensor, w13: Tensor, w2: Tensor): void {
    const [E, I2, D] = w13.shape as [number, number, number];
    const I = I2 / 2;
    const T = x.shape[0];
    const K = indices.shape[1];
    checkShape(w2, 'moe w2', [E, D, I]);
    moeExperts(
      f32(out, 'moe out', [T, D]), f32(x, 'moe x', [T, D]), i32(indices, 'moe indices', [T, K]), f32(weights, 'moe weights', [T, K]),
      f32(w13, 'moe w13'), f32(w2, 'moe w2'), T, D, E, K, I, this.scratch,
    );
  }

  private lightningScratchFor(Dh: number, B: number): LightningScratch {
    const key = `${Dh}:${B}`;
    if (this.lightningScratchCache?.key !== key) this.lightningScratchCache = { key, s: lightningScratch(Dh, B) };
    return this.lightningScratchCache.s;
  }
}

/** Pool row of each cache row [0, past + length) of a paged segment (see AttentionSegment). */
function pagedRows(seg: AttentionSegment, poolRows: number): Int32Array {
  const n = seg.past + seg.length;
  const table = i32(seg.blockTable, 'block table');
  const blocks = Math.ceil(n / KV_BLOCK_SIZE);
  if (table.length < blocks) throw new ShapeError(`attention: a block table of ${table.length} blocks cannot map ${n} cache rows`);
  const rows = new Int32Array(n);
  for (let r = 0; r < n; r++) {
    const block = table[Math.floor(r / KV_BLOCK_SIZE)];
    const p = block * KV_BLOCK_SIZE + (r % KV_BLOCK_SIZE);
    if (!(block >= 0 && p < poolRows)) throw new ShapeError(`attention: block ${block} is outside a KV pool of ${poolRows / KV_BLOCK_SIZE} blocks`);
    rows[r] = p;
  }
  return rows;
}
