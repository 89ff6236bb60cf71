/**
 * The CUDA backend: bf16 activations and weights (fp32 routers, lightning states, slopes and logits), cuBLAS for
 * the linear layers, NVRTC-compiled kernels for everything else (kernels/*.cu), a caching allocator, and CUDA
 * graphs for decode steps. It implements the same Backend contract as the CPU reference and is tested against it.
 *
 * Per-call metadata (token ids, positions, segment tables, cache pointers) goes through a pinned host ring and a
 * device ring at offsets that depend only on the sequence of calls. A captured graph therefore replays correctly
 * once the host has re-run the forward pass in "metadata only" mode (`replaying`): every op then writes its tables
 * into the pinned ring at the same offsets and launches nothing; the graph's copy nodes pick the new values up.
 */

import type { AttentionSegment, Backend, DeviceMemoryInfo, DType, LightningSegment, NormAfter, SampleParams, Tensor } from '../backend.js';
import { DTYPE_BYTES, type StDType } from '../../weights/safetensors.js';
import { decodeToFloat32, f32ToBf16 } from '../../util/dtype.js';
import { InternalError, ShapeError, UnsupportedError } from '../../util/errors.js';
import { CachingAllocator } from './allocator.js';
import { Cublas, CUDA_R_16BF, CUDA_R_32F } from './cublas.js';
import { CudaContext, type CudaGraph, type DevicePtr, type KernelArg } from './driver.js';
import { KernelLibrary, type CompileEvent } from './kernels.js';
import { f32, gridFor, i32, i64, type OpRuntime } from './runtime.js';
import { attentionDecode, attentionPrefill, checkPagedSegments, segmentTables } from './ops/attention.js';
import { lightningDecode, lightningPrefill } from './ops/lightning.js';
import { moeExperts, moeRoute } from './ops/moe.js';
import { sampleTokens } from './ops/sampling.js';

const BYTES: Record<DType, number> = { f32: 4, bf16: 2, f16: 2, i32: 4 };

export class CudaTensor implements Tensor {
  constructor(
    readonly shape: readonly number[],
    readonly dtype: DType,
    readonly ptr: DevicePtr,
    /** True for the tensor that owns the allocation (views and ring uploads do not). */
    readonly owner: boolean,
  ) {}

  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  get bytes(): number {
    return this.size * BYTES[this.dtype];
  }
}

function asCuda(t: Tensor, what: string): CudaTensor {
  if (!(t instanceof CudaTensor)) throw new ShapeError(`${what}: expected a CUDA tensor`);
  return t;
}

function checkDims(t: Tensor, what: string, dims: readonly (number | undefined)[], dtype?: DType): CudaTensor {
  const c = asCuda(t, what);
  const ok = c.shape.length === dims.length && dims.every((d, i) => d === undefined || d === c.shape[i]);
  if (!ok) throw new ShapeError(`${what}: expected shape [${dims.map((d) => d ?? '?').join(', ')}], got [${c.shape.join(', ')}]`);
  if (dtype && c.dtype !== dtype) throw new ShapeError(`${what}: expected ${dtype}, got ${c.dtype}`);
  return c;
}

/** Host → device metadata through pinned memory, at call-order-determined offsets (see the file header). */
class MetadataRing {
  private offset = 0;
  private pendingSinceSync = false;
  readonly host: { ptr: bigint; buffer: ArrayBuffer };
  readonly device: DevicePtr;

  constructor(private readonly ctx: CudaContext, allocator: CachingAllocator, readonly bytes: number) {
    this.host = ctx.mallocHost(bytes);
    this.device = allocator.alloc(bytes);
  }

  /** Start of a forward pass: earlier copies must have finished before their pinned bytes are overwritten. */
  reset(): void {
    if (this.pendingSinceSync && !this.ctx.isCapturing) this.ctx.synchronize();
    this.pendingSinceSync = false;
    this.offset = 0;
  }

  /** Writes `data` at the next offset; enqueues the copy unless `copy` is false (graph replay). */
  push(data: ArrayBufferView, copy: boolean): DevicePtr {
    const bytes = data.byteLength;
    const at = (this.offset + 15) & ~15;
    if (at + bytes > this.bytes) {
      if (this.ctx.isCapturing) throw new InternalError('metadata ring overflow during graph capture');
      this.ctx.synchronize(); // everything queued has consumed its metadata
      this.offset = 0;
      return this.push(data, copy);
    }
    new Uint8Array(this.host.buffer, at, bytes).set(new Uint8Array(data.buffer, data.byteOffset, bytes));
    const dst = this.device + BigInt(at);
    if (copy) {
      this.ctx.copyHtoD(dst, this.host.ptr + BigInt(at), bytes);
      this.pendingSinceSync = true;
    }
    this.offset = at + bytes;
    return dst;
  }

  markSynchronized(): void {
    this.pendingSinceSync = false;
  }

  /** Copies were enqueued by other means (a graph launch): the next reset must wait for them. */
  markPending(): void {
    this.pendingSinceSync = true;
  }
}

export interface CudaBackendOptions {
  readonly device?: number;
  readonly onCompile?: (e: CompileEvent) => void;
}

export class CudaBackend implements Backend, OpRuntime {
  readonly name = 'cuda';
  readonly ctx: CudaContext;
  readonly allocator: CachingAllocator;
  readonly kernels: KernelLibrary;
  readonly blas: Cublas;
  private readonly blasWorkspace: DevicePtr;
  private disposed = false;
  private readonly meta: MetadataRing;
  private readonly staging: { ptr: bigint; buffer: ArrayBuffer; event: bigint }[];
  private stagingNext = 0;
  /** Per key: 'warm' after the eager first run, then the captured graph. */
  private readonly graphs = new Map<string, 'warm' | CudaGraph>();
  /** Graph replay: ops only write metadata (see the file header). */
  replaying = false;
  /** Scratch buffers owned by ops (grown on demand, never shrunk). */
  private readonly scratchBuffers = new Map<string, CudaTensor>();

  constructor(options: CudaBackendOptions = {}) {
    this.ctx = CudaContext.get(options.device ?? 0);
    this.allocator = new CachingAllocator(this.ctx);
    this.kernels = new KernelLibrary(this.ctx, undefined, options.onCompile);
    const wsBytes = 32 << 20;
    this.blasWorkspace = this.allocator.alloc(wsBytes);
    this.blas = new Cublas(this.ctx, this.blasWorkspace, wsBytes);
    this.meta = new MetadataRing(this.ctx, this.allocator, 8 << 20);
    this.staging = [0, 1].map(() => ({ ...this.ctx.mallocHost(STAGING_BYTES), event: this.ctx.createEvent() }));
  }

  /** Compiles every kernel file up front (start-up time instead of first-token time). */
  preloadKernels(): void {
    this.kernels.preload(['elementwise', 'lightning', 'attention', 'moe', 'sampling', ...(this.ctx.info.arch === 'sm_90a' ? ['attention_sm90'] : [])]);
  }

  // ------------------------------------------------------------------ memory
  alloc(shape: readonly number[], dtype: DType): Tensor {
    for (const s of shape) if (!Number.isSafeInteger(s) || s < 0) throw new ShapeError(`invalid tensor shape [${shape.join(', ')}]`);
    const bytes = shape.reduce((a, b) => a * b, 1) * BYTES[dtype];
    return new CudaTensor([...shape], dtype, this.allocator.alloc(bytes), true);
  }

  zeros(shape: readonly number[], dtype: DType): Tensor {
    const t = this.alloc(shape, dtype) as CudaTensor;
    this.ctx.memsetD8(t.ptr, 0, t.bytes);
    return t;
  }

  view(t: Tensor, shape: readonly number[], offset = 0): Tensor {
    const c = asCuda(t, 'view');
    const n = shape.reduce((a, b) => a * b, 1);
    if (offset < 0 || offset + n > c.size) throw new ShapeError(`view [${shape.join(', ')}] at +${offset} does not fit in [${c.shape.join(', ')}]`);
    return new CudaTensor([...shape], c.dtype, c.ptr + BigInt(offset * BYTES[c.dtype]), false);
  }

  upload(shape: readonly number[], dtype: DType, data: Float32Array | Int32Array): Tensor {
    const t = this.alloc(shape, dtype) as CudaTensor;
    if (data.length !== t.size) throw new ShapeError(`upload: ${data.length} values for shape [${shape.join(', ')}]`);
    this.ctx.copyHtoD(t.ptr, this.hostBytes(data, dtype), t.bytes);
    return t;
  }

  scratchUpload(shape: readonly number[], dtype: DType, data: Float32Array | Int32Array): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    if (data.length !== n) throw new ShapeError(`scratchUpload: ${data.length} values for shape [${shape.join(', ')}]`);
    return new CudaTensor([...shape], dtype, this.meta.push(this.hostBytes(data, dtype), !this.replaying), false);
  }

  beginStep(): void {
    this.meta.reset();
  }

  writeBytes(t: Tensor, offset: number, bytes: Uint8Array, src: StDType): void {
    const c = asCuda(t, 'writeBytes');
    const elemBytes = BYTES[c.dtype];
    let host: Uint8Array;
    if ((c.dtype === 'bf16' && src === 'BF16') || (c.dtype === 'f32' && src === 'F32') || (c.dtype === 'f16' && src === 'F16')) {
      host = bytes;
    } else if (c.dtype === 'f32' || c.dtype === 'bf16') {
      const f = new Float32Array(bytes.byteLength / DTYPE_BYTES[src]);
      decodeToFloat32(bytes, src, f, 0);
      if (c.dtype === 'f32') host = new Uint8Array(f.buffer);
      else {
        const b = new Uint16Array(f.length);
        f32ToBf16(f, b, 0);
        host = new Uint8Array(b.buffer);
      }
    } else {
      throw new UnsupportedError(`writeBytes: ${src} into a ${c.dtype} tensor`);
    }
    if (offset * elemBytes + host.byteLength > c.bytes) throw new ShapeError('writeBytes past the end of the tensor');
    this.stage(c.ptr + BigInt(offset * elemBytes), host);
  }

  /** Host bytes → device through the double-buffered pinned staging: fill one buffer while the other is in flight. */
  private stage(dst: DevicePtr, host: Uint8Array): void {
    for (let done = 0; done < host.byteLength; ) {
      const n = Math.min(STAGING_BYTES, host.byteLength - done);
      const s = this.staging[this.stagingNext];
      this.stagingNext ^= 1;
      this.ctx.synchronizeEvent(s.event);
      new Uint8Array(s.buffer, 0, n).set(host.subarray(done, done + n));
      this.ctx.copyHtoD(dst + BigInt(done), s.ptr, n);
      this.ctx.record(s.event);
      done += n;
    }
  }

  writeInt32(t: Tensor, offset: number, values: Int32Array): void {
    const c = asCuda(t, 'writeInt32');
    if (c.dtype !== 'i32') throw new ShapeError(`writeInt32 into a ${c.dtype} tensor`);
    if (offset < 0 || (offset + values.length) * 4 > c.bytes) throw new ShapeError('writeInt32 past the end of the tensor');
    this.stage(c.ptr + BigInt(offset * 4), new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
  }

  fillZero(t: Tensor): void {
    const c = asCuda(t, 'fillZero');
    if (!this.replaying) this.ctx.memsetD8(c.ptr, 0, c.bytes);
  }

  copy(dst: Tensor, src: Tensor): void {
    const d = asCuda(dst, 'copy dst'), s = asCuda(src, 'copy src');
    if (d.bytes !== s.bytes || d.dtype !== s.dtype) throw new ShapeError(`copy: [${s.shape}] ${s.dtype} into [${d.shape}] ${d.dtype}`);
    if (!this.replaying) this.ctx.copyDtoD(d.ptr, s.ptr, d.bytes);
  }

  toFloat32(t: Tensor): Float32Array {
    const c = asCuda(t, 'toFloat32');
    if (c.dtype === 'f32') {
      const out = new Float32Array(c.size);
      this.ctx.copyDtoH(out, c.ptr, c.bytes);
      this.meta.markSynchronized();
      return out;
    }
    if (c.dtype === 'i32') {
      const out = new Int32Array(c.size);
      this.ctx.copyDtoH(out, c.ptr, c.bytes);
      this.meta.markSynchronized();
      return Float32Array.from(out);
    }
    const raw = new Uint16Array(c.size);
    this.ctx.copyDtoH(raw, c.ptr, c.bytes);
    this.meta.markSynchronized();
    const out = new Float32Array(c.size);
    decodeToFloat32(new Uint8Array(raw.buffer), c.dtype === 'bf16' ? 'BF16' : 'F16', out, 0);
    return out;
  }

  /** Raw i32 contents (sampled token ids, counts). */
  toInt32(t: Tensor): Int32Array {
    const c = asCuda(t, 'toInt32');
    if (c.dtype !== 'i32') throw new ShapeError(`toInt32: expected i32, got ${c.dtype}`);
    const out = new Int32Array(c.size);
    this.ctx.copyDtoH(out, c.ptr, c.bytes);
    this.meta.markSynchronized();
    return out;
  }

  free(t: Tensor): void {
    const c = asCuda(t, 'free');
    if (c.owner) this.allocator.free(c.ptr);
  }

  /** cuMemGetInfo's free bytes plus the allocator's cached blocks (released on demand), and the bytes in use. */
  memoryInfo(): DeviceMemoryInfo {
    const { free, total } = this.ctx.memInfo();
    const s = this.allocator.stats();
    return { free: free + s.cachedBytes, total, used: s.usedBytes };
  }

  synchronize(): void {
    this.ctx.synchronize();
    this.meta.markSynchronized();
  }

  // ------------------------------------------------------------------ graphs
  /**
   * Runs `body` (a forward pass that only enqueues work) through a CUDA graph cached under `key`. Every call
   * executes the step exactly once (the body updates states in place): the first call runs eagerly, which settles
   * workspace and scratch addresses; the second captures the body and launches the graph; later calls re-run the
   * body in metadata-only mode and launch the graph. Calls with one key must make the same op sequence with the
   * same shapes (the same batch size): the caller keys graphs by them.
   */
  runGraph(key: string, body: () => void): void {
    const entry = this.graphs.get(key);
    if (entry === undefined) {
      body();
      this.graphs.set(key, 'warm');
      return;
    }
    let graph: CudaGraph;
    if (entry === 'warm') {
      this.synchronize(); // nothing of earlier steps may still read the pinned ring
      graph = this.ctx.capture(body);
      this.graphs.set(key, graph);
    } else {
      graph = entry;
      this.replaying = true;
      try {
        body();
      } finally {
        this.replaying = false;
      }
    }
    graph.launch();
    this.meta.markPending();
  }

  /**
   * Drops every captured graph. Graphs hold raw pointers to the buffers their kernels touched (workspace, scratch),
   * so whenever one of those is reallocated — a larger batch or prompt grew it — the graphs must be recaptured.
   */
  resetGraphs(): void {
    if (this.graphs.size === 0) return;
    this.synchronize(); // no graph may still be running when it is destroyed
    for (const g of this.graphs.values()) if (g !== 'warm') g.destroy();
    this.graphs.clear();
  }

  // ------------------------------------------------------------------ OpRuntime
  launch(file: string, name: string, grid: readonly number[], block: readonly number[], shared: number, args: readonly KernelArg[]): void {
    if (this.replaying) return;
    this.kernels.get(file, name).launch(grid, block, shared, args);
  }

  metaI32(values: ArrayLike<number>): DevicePtr {
    return this.meta.push(Int32Array.from(values), !this.replaying);
  }

  metaF32(values: ArrayLike<number>): DevicePtr {
    return this.meta.push(Float32Array.from(values), !this.replaying);
  }

  metaPtrs(values: readonly bigint[]): DevicePtr {
    return this.meta.push(BigUint64Array.from(values), !this.replaying);
  }

  scratch(name: string, bytes: number): DevicePtr {
    let t = this.scratchBuffers.get(name);
    if (!t || t.bytes < bytes) {
      if (t) {
        this.resetGraphs(); // captured graphs point at the old buffer
        this.allocator.free(t.ptr);
      }
      const want = Math.max(bytes, t ? t.bytes * 2 : 0);
      t = this.alloc([Math.ceil(want / 4)], 'i32') as CudaTensor;
      this.scratchBuffers.set(name, t);
    }
    return t.ptr;
  }

  download(dst: ArrayBufferView, src: DevicePtr, bytes: number): void {
    this.ctx.copyDtoH(dst, src, bytes);
    this.meta.markSynchronized();
  }

  private hostBytes(data: Float32Array | Int32Array, dtype: DType): Float32Array | Int32Array | Uint16Array {
    if (dtype === 'f32') return data instanceof Float32Array ? data : Float32Array.from(data);
    if (dtype === 'i32') return data instanceof Int32Array ? data : Int32Array.from(data);
    if (dtype === 'bf16') {
      const b = new Uint16Array(data.length);
      f32ToBf16(data instanceof Float32Array ? data : Float32Array.from(data), b, 0);
      return b;
    }
    throw new UnsupportedError(`upload of ${dtype}`);
  }

  // ------------------------------------------------------------------ ops
  embedding(out: Tensor, table: Tensor, ids: Tensor): void {
    const T = ids.shape[0];
    const [, D] = table.shape as [number, number];
    const o = checkDims(out, 'embedding out', [T, D]);
    const kernel = o.dtype === 'f32' ? 'embedding_f32' : 'embedding_bf16';
    this.launch('elementwise', kernel, [T], [256], 0, [o.ptr, asCuda(table, 'table').ptr, asCuda(ids, 'ids').ptr, i32(D)]);
  }

  linear(out: Tensor, x: Tensor, w: Tensor): void {
    const [N, K] = w.shape as [number, number];
    const T = x.shape[0];
    const xc = checkDims(x, 'linear x', [T, K]);
    const oc = checkDims(out, 'linear out', [T, N]);
    const wc = asCuda(w, 'linear w');
    if (this.replaying) return;
    if (wc.dtype === 'f32') {
      // fp32 weights (the router): fp32 GEMM on an fp32 copy of x, fp32 output
      let xf = xc.ptr;
      if (xc.dtype === 'bf16') {
        xf = this.scratch('linear.x32', T * K * 4);
        this.launch('elementwise', 'cast_bf16_f32', [gridFor(T * K)], [256], 0, [xf, xc.ptr, i64(T * K)]);
      }
      if (oc.dtype !== 'f32') throw new ShapeError('linear with fp32 weights needs an fp32 output');
      this.blas.linear(oc.ptr, CUDA_R_32F, N, xf, CUDA_R_32F, K, wc.ptr, CUDA_R_32F, K, T, N, K);
      return;
    }
    if (xc.dtype !== wc.dtype) throw new ShapeError(`linear: x is ${xc.dtype} but w is ${wc.dtype}`);
    this.blas.linear(oc.ptr, oc.dtype === 'f32' ? CUDA_R_32F : CUDA_R_16BF, N, xc.ptr, CUDA_R_16BF, K, wc.ptr, CUDA_R_16BF, K, T, N, K);
  }

  rmsNorm(out: Tensor, x: Tensor, w: Tensor, eps: number): void {
    const C = w.shape[0];
    const xc = asCuda(x, 'rmsNorm x');
    const rows = xc.size / C;
    const oc = checkDims(out, 'rmsNorm out', [rows, C]);
    const kernel = xc.dtype === 'bf16' && oc.dtype === 'bf16' ? 'rms_norm_bf16'
      : xc.dtype === 'f32' && oc.dtype === 'bf16' ? 'rms_norm_f32_bf16'
      : xc.dtype === 'f32' && oc.dtype === 'f32' ? 'rms_norm_f32_f32'
      : undefined;
    if (!kernel) throw new ShapeError(`rmsNorm: ${xc.dtype} → ${oc.dtype} is not supported`);
    this.launch('elementwise', kernel, [rows], [normThreads(C)], 0, [oc.ptr, xc.ptr, asCuda(w, 'rmsNorm w').ptr, i32(C), f32(eps)]);
  }

  postnormResidual(out: Tensor, x: Tensor, w: Tensor, eps: number, alpha: number, branch: Tensor, beta: number, then?: NormAfter): void {
    const C = w.shape[0];
    const xc = asCuda(x, 'postnormResidual x');
    const rows = xc.size / C;
    const oc = checkDims(out, 'postnormResidual out', [rows, C], 'f32');
    if (xc.dtype !== 'f32') throw new ShapeError('postnormResidual: the residual stream must be f32');
    const bc = checkDims(branch, 'postnormResidual branch', [rows, C]);
    const args = [oc.ptr, xc.ptr, asCuda(w, 'w').ptr, bc.ptr, i32(C), f32(eps), f32(alpha), f32(beta)];
    const kind = bc.dtype === 'f32' ? 'f32' : 'bf16';
    // Fused with the norms that follow (one launch instead of up to three per site): at most one bf16 and one f32
    // output, with the same per-thread arithmetic as postnorm_residual_* followed by rms_norm_f32_*.
    const outs = (then?.outs ?? []).map((t, i) => checkDims(t, `postnormResidual then.outs[${i}]`, [rows, C]));
    const hb = outs.filter((t) => t.dtype === 'bf16'), hf = outs.filter((t) => t.dtype === 'f32');
    if (then && outs.length > 0 && hb.length <= 1 && hf.length <= 1 && hb.length + hf.length === outs.length) {
      const wn = asCuda(then.w, 'postnormResidual then.w');
      this.launch('elementwise', `postnorm_residual_norm_${kind}`, [rows], [normThreads(C)], 0,
        [...args, wn.ptr, f32(then.eps), hb[0]?.ptr ?? 0n, hf[0]?.ptr ?? 0n]);
      return;
    }
    this.launch('elementwise', `postnorm_residual_${kind}`, [rows], [normThreads(C)], 0, args);
    for (const n of outs) this.rmsNorm(n, out, then!.w, then!.eps);
  }

  residualAdd(out: Tensor, residual: Tensor, alpha: number, branch: Tensor, beta: number): void {
    const o = asCuda(out, 'residualAdd out');
    const n = o.size;
    this.launch('elementwise', 'residual_add_bf16', [gridFor(n)], [256], 0, [o.ptr, asCuda(residual, 'residual').ptr, asCuda(branch, 'branch').ptr, i64(n), f32(alpha), f32(beta)]);
  }

  siluInPlace(x: Tensor): void {
    const c = asCuda(x, 'silu x');
    this.launch('elementwise', 'silu_bf16', [gridFor(c.size)], [256], 0, [c.ptr, i64(c.size)]);
  }

  sigmoidMul(out: Tensor, gate: Tensor, x: Tensor): void {
    const o = asCuda(out, 'sigmoidMul out');
    this.launch('elementwise', 'sigmoid_mul_bf16', [gridFor(o.size)], [256], 0, [o.ptr, asCuda(gate, 'gate').ptr, asCuda(x, 'x').ptr, i64(o.size)]);
  }

  gatherRows(out: Tensor, x: Tensor, rows: Tensor): void {
    const C = x.shape[x.shape.length - 1];
    const R = rows.shape[0];
    const o = checkDims(out, 'gatherRows out', [R, C]);
    const xc = asCuda(x, 'gatherRows x');
    if (xc.dtype !== o.dtype) throw new ShapeError(`gatherRows: ${xc.dtype} rows into a ${o.dtype} tensor`);
    this.launch('elementwise', xc.dtype === 'f32' ? 'gather_rows_f32' : 'gather_rows_bf16', [R], [256], 0, [o.ptr, xc.ptr, asCuda(rows, 'rows').ptr, i32(C)]);
  }

  rope(x: Tensor, positions: Tensor, rotaryDim: number, theta: number): void {
    const [T, nh, Dh] = x.shape as [number, number, number];
    this.launch('elementwise', 'rope_bf16', [T], [256], 0, [asCuda(x, 'rope x').ptr, asCuda(positions, 'positions').ptr, i32(nh), i32(Dh), i32(rotaryDim), f32(theta)]);
  }

  lightningAttention(out: Tensor, qkv: Tensor, slopes: Tensor, segments: readonly LightningSegment[], blockSize: number): void {
    const H = slopes.shape[0];
    const T = qkv.shape[0];
    const Dh = qkv.shape[1] / (3 * H);
    const o = checkDims(out, 'lightning out', [T, H * Dh], 'bf16');
    const q = checkDims(qkv, 'lightning qkv', [T, 3 * H * Dh], 'bf16');
    const s = checkDims(slopes, 'slopes', [H], 'f32');
    const decode = segments.filter((g) => g.length === 1);
    const prefill = segments.filter((g) => g.length > 1);
    if (decode.length > 0) lightningDecode(this, o, q, s, decode, H, Dh);
    if (prefill.length > 0) lightningPrefill(this, o, q, s, prefill, H, Dh, blockSize);
  }

  kvAppend(k: Tensor, v: Tensor, segments: readonly AttentionSegment[]): void {
    const [, Hkv, Dh] = k.shape as [number, number, number];
    if (segments.length === 0) return;
    checkPagedSegments(segments, Hkv, Dh, 'kvAppend');
    const maxLen = Math.max(...segments.map((g) => g.length));
    // Paged: cache row r of a segment is pool row blockTable[r >> 6] · 64 + (r & 63) (the kernel maps the rows).
    const t = segmentTables(this, segments);
    this.launch('elementwise', 'kv_append_bf16', [maxLen, segments.length], [128], 0, [asCuda(k, 'k').ptr, asCuda(v, 'v').ptr, t.starts, t.lens, t.pasts, t.kc, t.vc, t.bt, i32(Hkv * Dh)]);
  }

  attention(out: Tensor, q: Tensor, segments: readonly AttentionSegment[], scale: number): void {
    const [T, H, Dh] = q.shape as [number, number, number];
    const o = checkDims(out, 'attention out', [T, H, Dh], 'bf16');
    const qc = checkDims(q, 'attention q', [T, H, Dh], 'bf16');
    if (segments.length === 0) return;
    const Hkv = segments[0].k.shape[1];
    const decode = segments.filter((g) => g.length === 1);
    const prefill = segments.filter((g) => g.length > 1);
    if (prefill.length > 0) attentionPrefill(this, o, qc, prefill, H, Hkv, Dh, scale);
    if (decode.length > 0) attentionDecode(this, o, qc, decode, H, Hkv, Dh, scale);
  }

  moeRoute(indices: Tensor, weights: Tensor, logits: Tensor): void {
    const [T, E] = logits.shape as [number, number];
    const K = indices.shape[1];
    moeRoute(this, checkDims(indices, 'moe indices', [T, K], 'i32'), checkDims(weights, 'moe weights', [T, K], 'f32'), checkDims(logits, 'router logits', [T, E], 'f32'), T, E, K);
  }

  moeExperts(out: Tensor, x: Tensor, indices: Tensor, weights: Tensor, w13: Tensor, w2: Tensor): void {
    const [E, I2, D] = w13.shape as [number, number, number];
    const T = x.shape[0];
    const K = indices.shape[1];
    moeExperts(
      this,
      checkDims(out, 'moe out', [T, D]), checkDims(x, 'moe x', [T, D], 'bf16'),
      checkDims(indices, 'moe indices', [T, K], 'i32'), checkDims(weights, 'moe weights', [T, K], 'f32'),
      checkDims(w13, 'moe w13', [E, I2, D], 'bf16'), checkDims(w2, 'moe w2', [E, D, I2 / 2], 'bf16'),
      T, K, E, D, I2 / 2,
    );
  }

  /** Fills a bf16 or f32 tensor with offset + scale · (approximately normal) values from a seeded hash (benchmarks). */
  fillRandom(t: Tensor, seed: number, scale: number, offset = 0): void {
    const c = asCuda(t, 'fillRandom');
    if (c.dtype !== 'bf16' && c.dtype !== 'f32') throw new UnsupportedError(`fillRandom of ${c.dtype}`);
    this.launch('elementwise', c.dtype === 'bf16' ? 'fill_random_bf16' : 'fill_random_f32', [gridFor(c.size)], [256], 0, [c.ptr, i64(c.size), { u64: seed }, f32(scale), f32(offset)]);
  }

  /** Samples one token id per row of fp32 logits on the device (see ops/sampling.ts). */
  sampleTokens(out: Tensor, logits: Tensor, params: readonly SampleParams[]): void {
    const [R, V] = logits.shape as [number, number];
    if (params.length !== R) throw new ShapeError(`sampleTokens: ${params.length} parameter sets for ${R} rows`);
    sampleTokens(this, checkDims(out, 'sample out', [R], 'i32'), checkDims(logits, 'sample logits', [R, V], 'f32'), R, V, params);
  }

  /** Releases graphs, scratch and cached device memory, pinned buffers and the cuBLAS handle. Idempotent. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.resetGraphs();
    this.ctx.synchronize();
    for (const t of this.scratchBuffers.values()) this.allocator.free(t.ptr);
    this.scratchBuffers.clear();
    this.allocator.free(this.meta.device);
    this.allocator.free(this.blasWorkspace);
    this.allocator.releaseCache();
    this.blas.destroy();
    this.ctx.freeHost(this.meta.host.ptr);
    for (const s of this.staging) {
      this.ctx.freeHost(s.ptr);
      this.ctx.destroyEvent(s.event);
    }
  }
}

/** Threads per row for the norm kernels. */
function normThreads(C: number): number {
  return C >= 4096 ? 1024 : C >= 1024 ? 512 : 256;
}


/** Pinned staging buffer size for weight uploads. */
const STAGING_BYTES = 64 << 20;
