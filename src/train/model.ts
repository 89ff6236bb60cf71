/**
 * The MiniMax-01 training step, forward and backward, written once over TrainBackend (llm.c style: explicit
 * activations, then the layers walked back). The forward is the inference model's (src/model/minimax01.ts):
 *
 *   x  = embed[ids]
 *   per layer l:  h1 = rms(x, in) → attn → a;  x1 = h1·α + a·β;  h2 = rms(x1, post) → moe → m;  x = h2·α' + m·β'
 *   logits = rms(x, final) · lm_headᵀ;  loss = mean CE over the targets + aux losses
 *
 * and each backward mirrors its forward line. With `recompute`, only each layer's input stream is kept; a layer's
 * activations are rebuilt from it just before its backward (one layer's worth of memory instead of L).
 */

import type { ModelConfig } from '../config/config.js';
import { InvalidArgumentError } from '../util/errors.js';
import type { Docs, MoeSaved, TrainBackend, TTensor } from './backend.js';
import { slopeTensors, type LayerParams, type ModelParams } from './params.js';

/** A packed batch (see src/train/data.ts): documents concatenated, no padding. */
export interface TrainBatch {
  /** Token ids [T]. */
  readonly ids: Int32Array;
  /** Next token within the document, −1 where there is none (each document's last token). */
  readonly targets: Int32Array;
  /** Position of each token in its document (restarts at 0). */
  readonly positions: Int32Array;
  /** Document boundaries [count + 1]. */
  readonly offsets: Int32Array;
  readonly maxLength: number;
}

export interface StepLosses {
  /** Sum of the per-token cross-entropies of this batch (nats). */
  readonly ceSum: number;
  /** Tokens with a target. */
  readonly targets: number;
  /** The load-balancing and z-loss terms, coefficients applied, as added to the objective. */
  readonly aux: number;
  readonly z: number;
}

export interface TrainModelOptions {
  /** Keep only layer inputs and recompute each layer in the backward. */
  readonly recompute?: boolean;
  /** Router z-loss coefficient (0 = off). */
  readonly zLossCoef?: number;
  /** Load-balancing coefficient; default: the config's router_aux_loss_coef. */
  readonly auxLossCoef?: number;
}

/** Everything one layer's backward needs. */
interface LayerActs {
  xin: TTensor; // [T, D] the stream entering the layer
  h1: TTensor; rstd1: TTensor;
  x1: TTensor; h2: TTensor; rstd2: TTensor;
  // lightning
  qkvPre?: TTensor; qkv?: TTensor; lo?: TTensor; lon?: TTensor; lrstd?: TTensor; lg?: TTensor; ly?: TTensor;
  // softmax
  q?: TTensor; k?: TTensor; v?: TTensor; ao?: TTensor; lse?: TTensor;
  // moe
  rlogits: TTensor; probs: TTensor; idx: TTensor; wts: TTensor; saved: MoeSaved;
}

export class TrainModel {
  private readonly slopes: (TTensor | undefined)[];
  private readonly auxCoef: number;
  private readonly zCoef: number;

  constructor(
    readonly backend: TrainBackend,
    readonly config: ModelConfig,
    private readonly opts: TrainModelOptions = {},
  ) {
    this.slopes = slopeTensors(backend, config);
    this.auxCoef = opts.auxLossCoef ?? config.routerAuxLossCoef;
    this.zCoef = opts.zLossCoef ?? 0;
  }

  /**
   * Forward and backward of one (micro-)batch: gradients are ADDED into `grads` (so accumulation is a loop).
   * The cross-entropy is weighted by `ceScale` per target token (1 / all targets of the accumulated step) and the
   * aux losses by `auxScale` (1 / micro-batches), so the gradient is that of the step's mean objective.
   */
  step(params: ModelParams, grads: ModelParams, batch: TrainBatch, ceScale: number, auxScale: number): StepLosses {
    const b = this.backend, c = this.config;
    const T = batch.ids.length;
    const { hiddenSize: D, numLayers: L } = c;
    const up = this.upload(batch);
    const { buf, ids, positions, docs } = up;
    try {
      const routeLosses = buf([2]); b.fillZero(routeLosses);
      const recompute = this.opts.recompute ?? false;
      const f = this.forward(params, up, recompute, ceScale); // f.logits now hold dLogits

      // ---- backward ----
      const dLogits = f.logits;
      const dhf = buf([T, D]);
      b.linearBackwardInput(dhf, dLogits, params.lmHead, false);
      b.linearBackwardWeight(grads.lmHead, dLogits, f.hf);
      let dx = buf([T, D]);
      b.rmsNormBackward(dx, grads.finalNorm, dhf, f.x, params.finalNorm, f.rstdf, false);
      let dxIn = buf([T, D]);
      const scratch = this.allocGrads(buf, T);
      for (let l = L - 1; l >= 0; l--) {
        const a = f.acts[l];
        if (recompute) this.layerForward(scratch.out, a, params.layers[l], l, docs, positions);
        this.layerBackward(dxIn, dx, a, params.layers[l], grads.layers[l], l, docs, positions, scratch, auxScale, routeLosses);
        [dx, dxIn] = [dxIn, dx]; // this layer's input gradient is the previous layer's output gradient
      }
      b.embeddingBackward(grads.embed, dx, ids);

      const rl = b.read(routeLosses);
      return { ceSum: hostSum(b.read(f.losses)), targets: countTargets(batch), aux: rl[0], z: rl[1] };
    } finally {
      for (const t of up.alloc) b.free(t);
    }
  }

  /** Mean cross-entropy (nats per target token) of a batch without gradients (validation). */
  evaluate(params: ModelParams, batch: TrainBatch): { ceSum: number; targets: number } {
    const up = this.upload(batch);
    try {
      const f = this.forward(params, up, true, 0);
      return { ceSum: hostSum(this.backend.read(f.losses)), targets: countTargets(batch) };
    } finally {
      for (const t of up.alloc) this.backend.free(t);
    }
  }

  /**
   * The forward pass to per-token losses; dLogits (scaled by ceScale) overwrite the logits. `sharedActs`: one
   * activation set reused by every layer (only the layer inputs survive: recomputation, or no backward at all);
   * otherwise each layer keeps its own. Returns what the backward needs.
   */
  private forward(params: ModelParams, up: ReturnType<TrainModel['upload']>, sharedActs: boolean, ceScale: number) {
    const b = this.backend, c = this.config;
    const { buf, ids, targets, positions, docs } = up;
    const T = ids.shape[0];
    const { hiddenSize: D, vocabSize: V } = c;
    const shared = sharedActs ? this.allocActs(buf, T) : undefined;
    const acts: LayerActs[] = [];
    let x = buf([T, D]);
    b.embeddingForward(x, params.embed, ids);
    for (let l = 0; l < c.numLayers; l++) {
      const a = { ...(shared ?? this.allocActs(buf, T)), xin: x };
      const next = buf([T, D]);
      this.layerForward(next, a, params.layers[l], l, docs, positions);
      acts.push(a);
      x = next;
    }
    const hf = buf([T, D]), rstdf = buf([T]);
    b.rmsNormForward(hf, rstdf, x, params.finalNorm, c.rmsNormEps);
    const logits = buf([T, V]);
    b.linearForward(logits, hf, params.lmHead);
    const losses = buf([T]);
    b.crossEntropy(losses, logits, logits, targets, ceScale);
    return { acts, x, hf, rstdf, logits, losses };
  }

  /** Validates the batch and puts it on the backend; `buf` allocates more buffers freed with it (`alloc`). */
  private upload(batch: TrainBatch) {
    const b = this.backend;
    validateBatch(batch, this.config.vocabSize);
    const T = batch.ids.length;
    const alloc: TTensor[] = [];
    const buf = (shape: number[], dtype: 'float' | 'i32' = 'float'): TTensor => {
      const t = b.alloc(shape, dtype);
      alloc.push(t);
      return t;
    };
    const ids = buf([T], 'i32'); b.write(ids, batch.ids);
    const targets = buf([T], 'i32'); b.write(targets, batch.targets);
    const positions = buf([T], 'i32'); b.write(positions, batch.positions);
    const offsets = buf([batch.offsets.length], 'i32'); b.write(offsets, batch.offsets);
    const docs: Docs = { offsets, host: batch.offsets, count: batch.offsets.length - 1, maxLength: batch.maxLength };
    return { alloc, buf, ids, targets, positions, docs };
  }

  // ---- one layer ----

  private allocActs(buf: (shape: number[], dtype?: 'float' | 'i32') => TTensor, T: number): LayerActs {
    const c = this.config;
    const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: Dh, numExperts: E, numExpertsPerTok: K, intermediateSize: I } = c;
    const Hd = H * Dh;
    const hasLightning = c.layerTypes.includes('lightning'), hasSoftmax = c.layerTypes.includes('softmax');
    return {
      xin: undefined as unknown as TTensor,
      h1: buf([T, D]), rstd1: buf([T]), x1: buf([T, D]), h2: buf([T, D]), rstd2: buf([T]),
      ...(hasLightning && {
        qkvPre: buf([T, 3 * Hd]), qkv: buf([T, 3 * Hd]), lo: buf([T, Hd]), lon: buf([T, Hd]), lrstd: buf([T]), lg: buf([T, Hd]), ly: buf([T, Hd]),
      }),
      ...(hasSoftmax && { q: buf([T, H, Dh]), k: buf([T, Hkv, Dh]), v: buf([T, Hkv, Dh]), ao: buf([T, H, Dh]), lse: buf([T, H]) }),
      rlogits: buf([T, E]), probs: buf([T, E]), idx: buf([T, K], 'i32'), wts: buf([T, K]),
      saved: { h13: buf([T * K, 2 * I]), y: buf([T * K, D]) },
    };
  }

  /** Gradient scratch shared by every layer's backward. */
  private allocGrads(buf: (shape: number[], dtype?: 'float' | 'i32') => TTensor, T: number) {
    const c = this.config;
    const { hiddenSize: D, numHeads: H, numKvHeads: Hkv, headDim: Dh, numExperts: E, numExpertsPerTok: K } = c;
    const Hd = H * Dh;
    return {
      out: buf([T, D]), // recompute target for the layer output (unused values)
      dh1: buf([T, D]), dx1: buf([T, D]), dh2: buf([T, D]), da: buf([T, D]), dm: buf([T, D]),
      d3: buf([T, 3 * Hd]), dHd1: buf([T, Hd]), dHd2: buf([T, Hd]), dHd3: buf([T, Hd]),
      dq: buf([T, H, Dh]), dk: buf([T, Hkv, Dh]), dv: buf([T, Hkv, Dh]),
      dWts: buf([T, K]), dRouter: buf([T, E]),
    };
  }

  private layerForward(out: TTensor, a: LayerActs, w: LayerParams, l: number, docs: Docs, positions: TTensor): void {
    const b = this.backend, c = this.config;
    const kind = c.layerTypes[l];
    b.rmsNormForward(a.h1, a.rstd1, a.xin, w.inputNorm, c.rmsNormEps);
    const attnOut = out; // the branch output borrows `out` until the residual overwrites it
    if (w.attn.kind === 'lightning') {
      b.linearForward(a.qkvPre!, a.h1, w.attn.qkv);
      b.siluForward(a.qkv!, a.qkvPre!);
      b.lightningForward(a.lo!, a.qkv!, this.slopes[l]!, docs, c.blockSize);
      b.rmsNormForward(a.lon!, a.lrstd!, a.lo!, w.attn.norm, c.lightningNormEps);
      b.linearForward(a.lg!, a.h1, w.attn.gate);
      b.sigmoidMulForward(a.ly!, a.lg!, a.lon!);
      b.linearForward(attnOut, a.ly!, w.attn.out);
    } else {
      const { numHeads: H, numKvHeads: Hkv, headDim: Dh } = c;
      const T = a.xin.shape[0];
      b.linearForward(b.view(a.q!, [T, H * Dh]), a.h1, w.attn.q);
      b.linearForward(b.view(a.k!, [T, Hkv * Dh]), a.h1, w.attn.k);
      b.linearForward(b.view(a.v!, [T, Hkv * Dh]), a.h1, w.attn.v);
      b.rope(a.q!, positions, c.rotaryDim, c.ropeTheta, false);
      b.rope(a.k!, positions, c.rotaryDim, c.ropeTheta, false);
      b.attentionForward(a.ao!, a.lse!, a.q!, a.k!, a.v!, docs, 1 / Math.sqrt(Dh));
      b.linearForward(attnOut, b.view(a.ao!, [T, H * Dh]), w.attn.o);
    }
    // x1 = h1·α + a·β;  h2 = rms(x1)
    b.axpby(a.x1, c.alpha[kind], a.h1, c.beta[kind], attnOut);
    b.rmsNormForward(a.h2, a.rstd2, a.x1, w.postNorm, c.rmsNormEps);
    // moe
    b.linearForward(a.rlogits, a.h2, w.router, true);
    b.moeRouteForward(a.idx, a.wts, a.probs, a.rlogits);
    const m = out;
    b.moeExpertsForward(m, a.saved, a.h2, a.idx, a.wts, w.w13, w.w2);
    // x = h2·α' + m·β'
    b.axpby(out, c.beta.mlp, m, c.alpha.mlp, a.h2);
  }

  /**
   * dxIn (overwritten) = ∂L/∂(layer input) from dOut = ∂L/∂(layer output); parameter gradients added into g.
   */
  private layerBackward(
    dxIn: TTensor, dOut: TTensor, a: LayerActs, w: LayerParams, g: LayerParams, l: number, docs: Docs, positions: TTensor,
    s: ReturnType<TrainModel['allocGrads']>, auxScale: number, routeLosses: TTensor,
  ): void {
    const b = this.backend, c = this.config;
    const kind = c.layerTypes[l];
    const T = a.xin.shape[0];
    // x = h2·α' + m·β'
    b.axpby(s.dm, c.beta.mlp, dOut, 0, dOut);
    // moe: experts, then the router (its fp32 path), both feeding dh2
    b.moeExpertsBackward(s.dh2, g.w13, g.w2, s.dWts, s.dm, a.saved, a.h2, a.idx, a.wts, w.w13, w.w2);
    b.moeRouteBackward(s.dRouter, routeLosses, s.dWts, a.rlogits, a.probs, a.idx, a.wts, this.auxCoef * auxScale / c.numLayers, this.zCoef * auxScale / c.numLayers);
    b.linearBackwardWeight(g.router, s.dRouter, a.h2, true);
    b.linearBackwardInput(s.dh2, s.dRouter, w.router, true, true);
    b.axpby(s.dh2, 1, s.dh2, c.alpha.mlp, dOut);
    // h2 = rms(x1)
    b.rmsNormBackward(s.dx1, g.postNorm, s.dh2, a.x1, w.postNorm, a.rstd2, false);
    // x1 = h1·α + a·β
    b.axpby(s.da, c.beta[kind], s.dx1, 0, s.dx1);
    b.axpby(s.dh1, c.alpha[kind], s.dx1, 0, s.dx1);
    if (w.attn.kind === 'lightning' && g.attn.kind === 'lightning') {
      b.linearBackwardInput(s.dHd1, s.da, w.attn.out, false); // dy
      b.linearBackwardWeight(g.attn.out, s.da, a.ly!);
      b.sigmoidMulBackward(s.dHd2, s.dHd3, s.dHd1, a.lg!, a.lon!); // dGate, dLon
      b.linearBackwardWeight(g.attn.gate, s.dHd2, a.h1);
      b.linearBackwardInput(s.dh1, s.dHd2, w.attn.gate, true);
      b.rmsNormBackward(s.dHd1, g.attn.norm, s.dHd3, a.lo!, w.attn.norm, a.lrstd!, false); // dLo
      b.lightningBackward(s.d3, s.dHd1, a.qkv!, this.slopes[l]!, docs, c.blockSize);
      b.siluBackward(s.d3, s.d3, a.qkvPre!);
      b.linearBackwardWeight(g.attn.qkv, s.d3, a.h1);
      b.linearBackwardInput(s.dh1, s.d3, w.attn.qkv, true);
    } else if (w.attn.kind === 'softmax' && g.attn.kind === 'softmax') {
      const { numHeads: H, numKvHeads: Hkv, headDim: Dh } = c;
      const dao = s.dq; // dO of the attention core, [T, H, Dh]
      b.linearBackwardInput(b.view(dao, [T, H * Dh]), s.da, w.attn.o, false);
      b.linearBackwardWeight(g.attn.o, s.da, b.view(a.ao!, [T, H * Dh]));
      const dqCore = b.view(s.dHd1, [T, H, Dh]);
      b.attentionBackward(dqCore, s.dk, s.dv, dao, a.q!, a.k!, a.v!, a.ao!, a.lse!, docs, 1 / Math.sqrt(Dh));
      b.rope(dqCore, positions, c.rotaryDim, c.ropeTheta, true);
      b.rope(s.dk, positions, c.rotaryDim, c.ropeTheta, true);
      const dq2 = b.view(dqCore, [T, H * Dh]), dk2 = b.view(s.dk, [T, Hkv * Dh]), dv2 = b.view(s.dv, [T, Hkv * Dh]);
      b.linearBackwardWeight(g.attn.q, dq2, a.h1);
      b.linearBackwardWeight(g.attn.k, dk2, a.h1);
      b.linearBackwardWeight(g.attn.v, dv2, a.h1);
      b.linearBackwardInput(s.dh1, dq2, w.attn.q, true);
      b.linearBackwardInput(s.dh1, dk2, w.attn.k, true);
      b.linearBackwardInput(s.dh1, dv2, w.attn.v, true);
    }
    // h1 = rms(xin)
    b.rmsNormBackward(dxIn, g.inputNorm, s.dh1, a.xin, w.inputNorm, a.rstd1, false);
  }
}

/** Positions of the batch that have a target (the cross-entropy's denominator). */
export function countTargets(batch: Pick<TrainBatch, 'targets'>): number {
  let n = 0;
  for (let i = 0; i < batch.targets.length; i++) if (batch.targets[i] >= 0) n++;
  return n;
}

function hostSum(a: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i];
  return s;
}

function validateBatch(batch: TrainBatch, V: number): void {
  const T = batch.ids.length;
  if (T === 0) throw new InvalidArgumentError('train batch: no tokens', { param: 'batch' });
  if (batch.targets.length !== T || batch.positions.length !== T) throw new InvalidArgumentError('train batch: ids, targets and positions differ in length', { param: 'batch' });
  const o = batch.offsets;
  if (o.length < 2 || o[0] !== 0 || o[o.length - 1] !== T) throw new InvalidArgumentError(`train batch: document offsets must run from 0 to ${T}`, { param: 'batch.offsets' });
  for (let i = 0; i < T; i++) {
    if (batch.ids[i] < 0 || batch.ids[i] >= V) throw new InvalidArgumentError(`train batch: token id ${batch.ids[i]} outside the vocabulary [0, ${V})`, { param: 'batch.ids' });
    if (batch.targets[i] >= V || batch.targets[i] < -1) throw new InvalidArgumentError(`train batch: target ${batch.targets[i]} outside the vocabulary`, { param: 'batch.targets' });
  }
}
