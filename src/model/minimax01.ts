/**
 * The MiniMax-01 forward pass (MODEL.md §5–§11), written once over the Backend interface.
 *
 * One call runs a varlen batch: several sequences, each contributing some tokens (a whole prompt, a prefill chunk,
 * or one decode token), concatenated along T. Every op sees the whole batch; only lightning and softmax attention
 * look at sequence boundaries (segments). So prefill, chunked prefill and decode are the same code path.
 *
 *   x  = embed[ids]
 *   per layer l:  h1 = rms(x) · attn → a;  x1 = h1·α + a·β;  h2 = rms(x1) · moe → m;  x = h2·α + m·β
 *   logits = rms(x) · lm_headᵀ       (rows requested only)
 *
 * Intermediates carry trace names (`embed`, `attn_norm`, `lightning_out`, `attn_out`, `ffn_norm`, `router_topk`,
 * `moe_out`, `l_out`, `final_norm`) so a trace hook can compare any of them with a reference.
 */

import type { AttentionSegment, Backend, DType, LightningSegment, SampleParams, Tensor } from '../backend/backend.js';
import type { ModelConfig } from '../config/config.js';
import { InternalError, InvalidArgumentError } from '../util/errors.js';
import { freeWeights, type LayerWeights, type ModelWeights } from './weights.js';
import { CachePool, kvBlocksFor, type CachePoolOptions, type SequenceState } from './cache.js';
import { expertRange, localConfig, validateParallel, type ParallelContext } from '../parallel/shard.js';

/**
 * Called with each named intermediate (layer −1 for model-level ones); `read()` copies it to the host as f32
 * (only valid during the call).
 */
export type TraceHook = (name: string, layer: number, read: () => Float32Array) => void;

export interface ForwardItem {
  readonly state: SequenceState;
  /** Token ids to append to this sequence (at least one). */
  readonly tokens: ArrayLike<number>;
  /** In 'last' mode, whether this item gets a logits row (default true): a partial prefill chunk needs none. */
  readonly logits?: boolean;
}

export interface ForwardOptions {
  /** Which rows get logits: every token, the last token of each item (that wants one), or none. Default 'last'. */
  readonly logits?: 'all' | 'last' | 'none';
  readonly trace?: TraceHook;
}

/** Logits of the requested rows, row-major [rows, V], in batch order. */
export interface ForwardResult {
  readonly logits: Float32Array;
  readonly rows: number;
  readonly vocabSize: number;
}

/** Reusable named scratch buffers, grown on demand, so a forward pass allocates nothing in steady state. */
class Workspace {
  private readonly buffers = new Map<string, Tensor>();
  constructor(private readonly backend: Backend) {}

  get(name: string, shape: readonly number[], dtype: DType): Tensor {
    const n = shape.reduce((a, b) => a * b, 1);
    let buf = this.buffers.get(name);
    if (!buf || buf.shape[0] < n || buf.dtype !== dtype) {
      if (buf) {
        // Captured graphs hold this buffer's address: they must be recaptured against the new one.
        this.backend.resetGraphs?.();
        this.backend.free(buf);
      }
      buf = this.backend.alloc([Math.max(n, buf ? buf.shape[0] * 2 : 0)], dtype);
      this.buffers.set(name, buf);
    }
    return this.backend.view(buf, shape);
  }

  dispose(): void {
    for (const b of this.buffers.values()) this.backend.free(b);
    this.buffers.clear();
  }
}

/** Sizes of the cache pool; the defaults suit the library (a few sessions, KV grown on demand). */
export type CacheOptions = Partial<Omit<CachePoolOptions, 'kvDType'>>;

export class MiniMax01 {
  private readonly ws: Workspace;
  /** Lightning state slots and the paged KV cache shared by every sequence of this model. */
  readonly cache: CachePool;
  /** This rank's heads, KV heads and experts when sharded (src/parallel/shard.ts); the single-process path has none. */
  private readonly par: { ctx: ParallelContext; heads: number; kvHeads: number; e0: number; e1: number } | undefined;

  constructor(
    readonly config: ModelConfig,
    readonly backend: Backend,
    readonly weights: ModelWeights,
    /** Activation dtype of the backend's scratch buffers (and of the KV cache). */
    readonly actDType: DType = 'f32',
    cache: CacheOptions = {},
    /**
     * A rank of a tensor/expert-parallel model: `weights` are this rank's shards (loadWeights with a `shard`
     * selection), caches hold this rank's heads, and partial results are all-reduced over `parallel.comm`.
     */
    parallel?: ParallelContext,
  ) {
    this.ws = new Workspace(backend);
    let cacheConfig = config;
    if (parallel) {
      validateParallel(config, parallel);
      cacheConfig = localConfig(config, parallel);
      const e = expertRange(config, parallel);
      if (parallel.tpSize > 1 && !(backend.sumSquares && backend.rmsNormSumSquares)) {
        throw new InternalError(`the ${backend.name} backend cannot run tensor parallelism (no sumSquares/rmsNormSumSquares)`);
      }
      this.par = { ctx: parallel, heads: cacheConfig.numHeads, kvHeads: cacheConfig.numKvHeads, e0: e.start, e1: e.end };
    }
    const maxKvBlocks = cache.maxKvBlocks ?? kvBlocksFor(config.maxPositionEmbeddings);
    this.cache = new CachePool(backend, cacheConfig, {
      maxSequences: cache.maxSequences ?? 256,
      initialKvBlocks: Math.min(cache.initialKvBlocks ?? 0, maxKvBlocks),
      maxKvBlocks,
      kvDType: actDType === 'f32' ? 'f32' : 'bf16',
    });
  }

  /** Fresh caches for one sequence (zero lightning states, empty KV); a CapacityError when every slot is taken. */
  newSequence(): SequenceState {
    return this.cache.acquire();
  }

  /** Runs a forward pass and returns the requested logits on the host. */
  forward(items: readonly ForwardItem[], options: ForwardOptions = {}): ForwardResult {
    const V = this.config.vocabSize;
    const r = this.run(items, options);
    return { logits: r.logits ? this.backend.toFloat32(r.logits) : new Float32Array(0), rows: r.rows, vocabSize: V };
  }

  /**
   * Runs a forward pass and samples one token per item on the device from its last position's logits; only the
   * ids come back. Needs a backend with `sampleTokens` (see `canSampleOnDevice`).
   */
  forwardSample(items: readonly ForwardItem[], params: readonly SampleParams[], options: Omit<ForwardOptions, 'logits'> = {}): Int32Array {
    const b = this.backend;
    if (!b.sampleTokens || !b.toInt32) throw new InternalError(`the ${b.name} backend cannot sample on the device`);
    const rows = items.filter((it) => it.logits !== false).length;
    if (params.length !== rows) throw new InternalError(`forwardSample: ${params.length} sampling parameter sets for ${rows} rows`);
    const ids = this.ws.get('sampled', [rows], 'i32');
    this.run(items, { ...options, logits: 'last' }, (logits) => b.sampleTokens!(ids, logits, params));
    return b.toInt32(ids);
  }

  get canSampleOnDevice(): boolean {
    return this.backend.sampleTokens !== undefined;
  }

  /**
   * Enqueues the forward pass (and `after`, given the logits) without waiting for it. Single-token steps of a
   * backend with graphs run as a CUDA graph keyed by batch size and logits mode; KV growth happens before, outside
   * the graph.
   */
  private run(items: readonly ForwardItem[], options: ForwardOptions, after?: (logits: Tensor) => void): { logits: Tensor | undefined; rows: number } {
    const b = this.backend;
    const mode = options.logits ?? 'last';
    const T = this.validate(items); // before any state changes
    let result: { logits: Tensor | undefined; rows: number } = { logits: undefined, rows: 0 };
    const body = (): void => {
      result = this.enqueue(items, T, mode, options.trace);
      if (after && result.logits) after(result.logits);
    };
    const graphable = b.runGraph !== undefined && !options.trace && items.length > 0 && items.every((it) => it.tokens.length === 1);
    if (!graphable) {
      body();
      return result;
    }
    for (const it of items) it.state.reserve(it.state.position + 1);
    const rows = items.filter((it) => it.logits !== false).length;
    b.runGraph!(`step:${items.length}:${rows}:${mode}:${after ? 'sample' : 'logits'}`, body);
    return result;
  }

  private validate(items: readonly ForwardItem[]): number {
    const V = this.config.vocabSize;
    let T = 0;
    for (const it of items) {
      if (it.tokens.length === 0) throw new InvalidArgumentError('forward: every sequence needs at least one token', { param: 'tokens' });
      for (let i = 0; i < it.tokens.length; i++) {
        const id = it.tokens[i];
        if (!Number.isInteger(id) || id < 0 || id >= V) {
          throw new InvalidArgumentError(`token id ${id} is out of range: the vocabulary has ${V} ids [0, ${V - 1}]`, { param: 'ids' });
        }
      }
      T += it.tokens.length;
    }
    return T;
  }

  /** Enqueues one step over validated items with T tokens in total. */
  private enqueue(items: readonly ForwardItem[], T: number, mode: 'all' | 'last' | 'none', trace: TraceHook | undefined): { logits: Tensor | undefined; rows: number } {
    const c = this.config, b = this.backend, ws = this.ws;
    const { hiddenSize: D, vocabSize: V } = c;
    const act = this.actDType;
    b.beginStep();

    // ---- the batch: ids, positions, segments ----
    const ids = new Int32Array(T), positions = new Int32Array(T);
    const soft: { start: number; length: number; past: number; state: SequenceState }[] = [];
    let start = 0;
    for (const it of items) {
      const n = it.tokens.length, past = it.state.position;
      for (let i = 0; i < n; i++) {
        ids[start + i] = it.tokens[i];
        positions[start + i] = past + i;
      }
      it.state.reserve(past + n);
      soft.push({ start, length: n, past, state: it.state });
      start += n;
    }
    const idsT = b.scratchUpload([T], 'i32', ids);
    const posT = b.scratchUpload([T], 'i32', positions);

    // ---- layers ----
    // The residual stream x is fp32 on every backend; activations feeding GEMMs and attention are `act` (bf16 on
    // the GPU). The postnorm residual recomputes the normalised x from the fp32 stream, so rounding never
    // accumulates along it, and the router reads an fp32 normalised input, so bf16 noise does not flip its picks.
    const x = ws.get('x', [T, D], 'f32');
    b.embedding(x, this.weights.embed, idsT);
    trace?.('embed', -1, () => b.toFloat32(x));
    const h = ws.get('h', [T, D], act);
    const hRouter = act === 'f32' ? h : ws.get('h_router', [T, D], 'f32');
    // Each postnorm residual also produces the norm that follows it (the next GEMM's input, and the router's):
    // one fused launch per site on the GPU. Layer 0's input norm is the only stand-alone one.
    const ffnNormOuts = hRouter !== h ? [h, hRouter] : [h];
    b.rmsNorm(h, x, this.weights.layers[0].inputNorm, c.rmsNormEps);
    for (let l = 0; l < c.numLayers; l++) {
      const w = this.weights.layers[l];
      const kind = c.layerTypes[l];
      trace?.('attn_norm', l, () => b.toFloat32(h));
      // Branch outputs stay fp32 until they join the fp32 residual stream.
      const a = ws.get('a', [T, D], 'f32');
      if (w.attn.kind === 'lightning') {
        const segs = soft.map((s) => ({ start: s.start, length: s.length, state: s.state.lightning[l]! }));
        this.lightningBlock(a, h, w.attn, segs, T, l, trace);
      } else {
        const segs: AttentionSegment[] = soft.map((s) => ({ start: s.start, length: s.length, past: s.past, ...s.state.kvFor(l) }));
        this.softmaxBlock(a, h, w.attn, segs, posT, T, l, trace);
      }
      // x1 = h1·α + a·β with h1 = rms(x);  h2 = rms(x1)
      b.postnormResidual(x, x, w.inputNorm, c.rmsNormEps, c.alpha[kind], a, c.beta[kind], { w: w.postNorm, eps: c.rmsNormEps, outs: ffnNormOuts });
      trace?.('ffn_norm', l, () => b.toFloat32(h));
      const m = ws.get('m', [T, D], 'f32');
      this.moeBlock(m, h, hRouter, w, T, l, trace);
      trace?.('moe_out', l, () => b.toFloat32(m));
      // out = h2·α + m·β
      const next = this.weights.layers[l + 1];
      b.postnormResidual(x, x, w.postNorm, c.rmsNormEps, c.alpha.mlp, m, c.beta.mlp, next && { w: next.inputNorm, eps: c.rmsNormEps, outs: [h] });
      trace?.('l_out', l, () => b.toFloat32(x));
    }
    for (const it of items) it.state.position += it.tokens.length;

    // ---- logits for the requested rows ----
    if (mode === 'none') return { logits: undefined, rows: 0 };
    let rowsT = x;
    let R = T;
    if (mode === 'last') {
      const last = Int32Array.from(soft.filter((_, i) => items[i].logits !== false), (s) => s.start + s.length - 1);
      R = last.length;
      if (R === 0) return { logits: undefined, rows: 0 };
      rowsT = ws.get('rows', [R, D], 'f32');
      b.gatherRows(rowsT, x, b.scratchUpload([R], 'i32', last));
    }
    const normed = ws.get('final', [R, D], act);
    b.rmsNorm(normed, rowsT, this.weights.finalNorm, c.rmsNormEps);
    trace?.('final_norm', -1, () => b.toFloat32(normed));
    const logits = ws.get('logits', [R, V], 'f32');
    b.linear(logits, normed, this.weights.lmHead);
    return { logits, rows: R };
  }

  /** MODEL.md §8: qkv = silu(h·Wqkvᵀ) → lightning → rms(·, 1e-6) → ⊙ sigmoid(h·Wgateᵀ) → ·Woutᵀ. */
  private lightningBlock(out: Tensor, h: Tensor, w: Extract<LayerWeights['attn'], { kind: 'lightning' }>, segs: LightningSegment[], T: number, l: number, trace?: TraceHook): void {
    const { headDim: Dh } = this.config;
    const H = this.par?.heads ?? this.config.numHeads;
    const tp = this.par && this.par.ctx.tpSize > 1 ? this.par.ctx : undefined;
    const b = this.backend, ws = this.ws, act = this.actDType;
    const qkv = ws.get('qkv', [T, 3 * H * Dh], act);
    b.linear(qkv, h, w.qkv);
    b.siluInPlace(qkv);
    const o = ws.get('o', [T, H * Dh], act);
    b.lightningAttention(o, qkv, w.slopes, segs, this.config.blockSize);
    trace?.('lightning_out', l, () => b.toFloat32(o));
    if (tp) {
      // The norm's mean runs over all H·Dh dims, which are spread over the ranks: all-reduce the sums of squares.
      const ss = ws.get('ss', [T], 'f32');
      b.sumSquares!(ss, o);
      tp.comm.allReduceSum(ss);
      b.rmsNormSumSquares!(o, o, w.norm, ss, this.config.numHeads * Dh, this.config.lightningNormEps);
    } else {
      b.rmsNorm(o, o, w.norm, this.config.lightningNormEps);
    }
    const g = ws.get('g', [T, H * Dh], act);
    b.linear(g, h, w.gate);
    b.sigmoidMul(o, g, o);
    b.linear(out, o, w.out);
    tp?.comm.allReduceSum(out); // row-parallel out_proj: each rank holds a partial sum over its heads' dims
    trace?.('attn_out', l, () => b.toFloat32(out));
  }

  /** MODEL.md §9: q/k/v projections, partial NeoX RoPE, KV append, causal GQA, o-proj. */
  private softmaxBlock(out: Tensor, h: Tensor, w: Extract<LayerWeights['attn'], { kind: 'softmax' }>, segs: AttentionSegment[], pos: Tensor, T: number, l: number, trace?: TraceHook): void {
    const { headDim: Dh, rotaryDim, ropeTheta } = this.config;
    const H = this.par?.heads ?? this.config.numHeads, Hkv = this.par?.kvHeads ?? this.config.numKvHeads;
    const b = this.backend, ws = this.ws, act = this.actDType;
    const q = ws.get('q', [T, H, Dh], act);
    const k = ws.get('k', [T, Hkv, Dh], act);
    const v = ws.get('v', [T, Hkv, Dh], act);
    b.linear(b.view(q, [T, H * Dh]), h, w.q);
    b.linear(b.view(k, [T, Hkv * Dh]), h, w.k);
    b.linear(b.view(v, [T, Hkv * Dh]), h, w.v);
    b.rope(q, pos, rotaryDim, ropeTheta);
    b.rope(k, pos, rotaryDim, ropeTheta);
    b.kvAppend(k, v, segs);
    const o = ws.get('o', [T, H, Dh], act);
    b.attention(o, q, segs, 1 / Math.sqrt(Dh));
    b.linear(out, b.view(o, [T, H * Dh]), w.o);
    if (this.par && this.par.ctx.tpSize > 1) this.par.ctx.comm.allReduceSum(out); // row-parallel o_proj
    trace?.('attn_out', l, () => b.toFloat32(out));
  }

  /** MODEL.md §10: fp32 router softmax → top-K → renormalise → SwiGLU experts → weighted sum. */
  private moeBlock(out: Tensor, h: Tensor, hRouter: Tensor, w: LayerWeights, T: number, l: number, trace?: TraceHook): void {
    const { numExperts: E, numExpertsPerTok: K } = this.config;
    const b = this.backend, ws = this.ws;
    const logits = ws.get('router', [T, E], 'f32');
    b.linear(logits, hRouter, w.router);
    const idx = ws.get('topk_idx', [T, K], 'i32');
    const wts = ws.get('topk_w', [T, K], 'f32');
    b.moeRoute(idx, wts, logits);
    trace?.('router_topk', l, () => b.toFloat32(idx));
    const par = this.par;
    if (!par || par.ctx.epSize === 1) {
      b.moeExperts(out, h, idx, wts, w.w13, w.w2);
      return;
    }
    // Expert parallelism: routing is replicated (identical on every rank); this rank combines only its experts
    // [e0, e1). Slots routed elsewhere become local expert 0 with weight 0 (they add exactly zero), then the
    // partial outputs are summed over ranks. The remap goes through the host: a CPU-side simplification.
    const gi = b.toFloat32(idx), gw = b.toFloat32(wts);
    const li = new Int32Array(T * K), lw = new Float32Array(T * K);
    for (let i = 0; i < T * K; i++) {
      const e = gi[i];
      if (e >= par.e0 && e < par.e1) {
        li[i] = e - par.e0;
        lw[i] = gw[i];
      }
    }
    b.moeExperts(out, h, b.scratchUpload([T, K], 'i32', li), b.scratchUpload([T, K], 'f32', lw), w.w13, w.w2);
    par.ctx.comm.allReduceSum(out);
  }

  /** Frees the weights, the scratch buffers and the backend's own resources. */
  dispose(): void {
    this.ws.dispose();
    this.cache.dispose();
    freeWeights(this.backend, this.weights);
    this.backend.dispose?.();
  }
}
