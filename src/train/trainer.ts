/**
 * The training loop: micro-batches → forward/backward (TrainModel) → gradient norm, clipping → AdamW, with a JSONL
 * log, periodic validation, checkpoints (src/train/checkpoint.ts) and resume. Deterministic for a seed on the CPU;
 * on CUDA, atomics in some backward kernels make the last bits depend on scheduling.
 */

import fs from 'node:fs';
import path from 'node:path';
import type { ModelConfig } from '../config/config.js';
import type { TrainBackend } from './backend.js';
import { loadOptimizerState, saveCheckpoint } from './checkpoint.js';
import { countTargets, TrainModel, type TrainBatch } from './model.js';
import { AdamW, type AdamWOptions } from './optimizer.js';
import { initialValues, ParamSet, paramSpecs, type ParamSpec } from './params.js';

/** Where batches come from: resumable. */
export interface BatchSource {
  next(): TrainBatch;
  /** A JSON-serialisable position to resume from. */
  state(): unknown;
}

export interface TrainerOptions {
  readonly config: ModelConfig;
  readonly optim: AdamWOptions & { readonly accumulate: number; readonly auxLossCoef?: number; readonly zLossCoef: number };
  readonly seed: number;
  readonly recompute: boolean;
  readonly initStd: number;
  /** Output directory: log.jsonl, checkpoint-<step>/ and final/. */
  readonly out?: string;
  readonly logEvery: number;
  readonly evalEvery: number;
  readonly saveEvery: number;
  readonly saveDtype: 'F32' | 'BF16';
  /** Copied into each checkpoint. */
  readonly tokenizerDir?: string;
  /** Stored in trainer_state.json. */
  readonly runConfig?: unknown;
}

export interface StepRecord {
  readonly step: number;
  /** Mean cross-entropy of the step's targets (nats). */
  readonly loss: number;
  readonly aux: number;
  readonly z: number;
  readonly lr: number;
  readonly gradNorm: number;
  /** Tokens in this step. */
  readonly tokens: number;
  readonly tokensPerSec: number;
  readonly elapsedS: number;
  readonly valLoss?: number;
}

export interface TrainerState {
  readonly step: number;
  readonly tokens: number;
  readonly elapsedS: number;
  readonly data: unknown;
  readonly run?: unknown;
}

export class Trainer {
  readonly specs: readonly ParamSpec[];
  readonly params: ParamSet;
  readonly grads: ParamSet;
  readonly optimizer: AdamW;
  readonly model: TrainModel;
  step = 0;
  tokens = 0;
  elapsedS = 0;

  private constructor(
    readonly backend: TrainBackend,
    readonly options: TrainerOptions,
    values: readonly Float64Array[],
    moments?: { m: readonly Float64Array[]; v: readonly Float64Array[] },
  ) {
    const c = options.config;
    this.specs = paramSpecs(c, options.initStd);
    this.params = new ParamSet(backend, c, this.specs, values);
    this.grads = new ParamSet(backend, c, this.specs);
    this.optimizer = new AdamW(backend, this.params, this.grads, options.optim, moments);
    this.model = new TrainModel(backend, c, { recompute: options.recompute, auxLossCoef: options.optim.auxLossCoef, zLossCoef: options.optim.zLossCoef });
  }

  /** A fresh model initialised from the seed. */
  static create(backend: TrainBackend, options: TrainerOptions): Trainer {
    return new Trainer(backend, options, initialValues(paramSpecs(options.config, options.initStd), options.seed));
  }

  /** Continues from a checkpoint written by `save` with optimiser state; returns the trainer and its state. */
  static async resume(backend: TrainBackend, options: TrainerOptions, dir: string): Promise<{ trainer: Trainer; state: TrainerState }> {
    const specs = paramSpecs(options.config, options.initStd);
    const st = await loadOptimizerState(dir, specs);
    const state = JSON.parse(fs.readFileSync(path.join(dir, 'trainer_state.json'), 'utf8')) as TrainerState;
    const t = new Trainer(backend, options, st.params, st);
    t.step = state.step;
    t.tokens = state.tokens;
    t.elapsedS = state.elapsedS;
    return { trainer: t, state };
  }

  /** One optimiser step over `accumulate` micro-batches. */
  trainStep(data: BatchSource): StepRecord {
    const o = this.options.optim;
    const t0 = performance.now();
    const micro: TrainBatch[] = [];
    for (let i = 0; i < o.accumulate; i++) micro.push(data.next());
    let targets = 0, tokens = 0;
    for (const m of micro) {
      tokens += m.ids.length;
      targets += countTargets(m);
    }
    this.grads.zero();
    let ceSum = 0, aux = 0, z = 0;
    for (const m of micro) {
      const r = this.model.step(this.params.model, this.grads.model, m, 1 / Math.max(1, targets), 1 / micro.length);
      ceSum += r.ceSum;
      aux += r.aux;
      z += r.z;
    }
    this.step++;
    const { lr, gradNorm } = this.optimizer.step(this.step);
    this.backend.synchronize();
    const dt = (performance.now() - t0) / 1000;
    this.tokens += tokens;
    this.elapsedS += dt;
    return { step: this.step, loss: ceSum / Math.max(1, targets), aux, z, lr, gradNorm, tokens, tokensPerSec: tokens / dt, elapsedS: this.elapsedS };
  }

  /** Mean validation cross-entropy over the given batches. */
  evaluate(batches: readonly TrainBatch[]): number {
    let ce = 0, n = 0;
    for (const b of batches) {
      const r = this.model.evaluate(this.params.model, b);
      ce += r.ceSum;
      n += r.targets;
    }
    return ce / Math.max(1, n);
  }

  /** Writes a checkpoint: inference weights at saveDtype plus the exact optimiser state and trainer_state.json. */
  save(dir: string, data: BatchSource): void {
    const values = this.params.read();
    const dtype = this.backend.name === 'cpu' ? 'F64' : 'F32';
    saveCheckpoint(dir, this.options.config, this.specs, values, {
      dtype: this.options.saveDtype,
      tokenizerDir: this.options.tokenizerDir,
      optimizer: { dtype, params: values, m: this.optimizer.m.read(), v: this.optimizer.v.read() },
      state: { step: this.step, tokens: this.tokens, elapsedS: this.elapsedS, data: data.state(), run: this.options.runConfig } satisfies TrainerState,
    });
  }

  /** Writes only the inference weights (an export, e.g. bf16 for the embedded model), optionally in shards. */
  export(dir: string, dtype: 'F32' | 'BF16', o: { maxShardBytes?: number; tokenizer?: boolean } = {}): void {
    saveCheckpoint(dir, this.options.config, this.specs, this.params.read(), {
      dtype, tokenizerDir: o.tokenizer === false ? undefined : this.options.tokenizerDir, maxShardBytes: o.maxShardBytes,
    });
  }

  /**
   * Trains until `steps`, logging every logEvery steps (and on validation / last step) to out/log.jsonl and
   * `onRecord`, validating every evalEvery steps, checkpointing every saveEvery steps and at the end.
   */
  run(data: BatchSource, val: readonly TrainBatch[], hooks: { onRecord?: (r: StepRecord) => void; signal?: AbortSignal } = {}): StepRecord | undefined {
    const o = this.options;
    const log = o.out ? path.join(o.out, 'log.jsonl') : undefined;
    if (o.out) fs.mkdirSync(o.out, { recursive: true });
    let last: StepRecord | undefined;
    while (this.step < o.optim.totalSteps) {
      if (hooks.signal?.aborted) break;
      let r = this.trainStep(data);
      const isLast = this.step === o.optim.totalSteps;
      if (val.length > 0 && ((o.evalEvery > 0 && this.step % o.evalEvery === 0) || isLast)) r = { ...r, valLoss: this.evaluate(val) };
      if (this.step % o.logEvery === 0 || isLast || r.valLoss !== undefined || this.step === 1) {
        if (log) fs.appendFileSync(log, JSON.stringify(r) + '\n');
      }
      hooks.onRecord?.(r);
      if (o.out && o.saveEvery > 0 && this.step % o.saveEvery === 0 && !isLast) this.save(path.join(o.out, `checkpoint-${this.step}`), data);
      last = r;
    }
    if (o.out) this.save(path.join(o.out, 'final'), data);
    return last;
  }

  dispose(): void {
    this.params.free();
    this.grads.free();
    this.optimizer.free();
    this.backend.dispose?.();
  }
}

/** The newest checkpoint directory under a run's output directory (final/ or the highest checkpoint-N/). */
export function latestCheckpoint(out: string): string | undefined {
  if (!fs.existsSync(out)) return undefined;
  const dirs = fs.readdirSync(out).filter((d) => /^checkpoint-\d+$/.test(d) && fs.existsSync(path.join(out, d, 'trainer_state.json')));
  dirs.sort((a, b) => Number(a.slice(11)) - Number(b.slice(11)));
  const finalDir = path.join(out, 'final');
  const candidates = [...dirs.map((d) => path.join(out, d))];
  if (fs.existsSync(path.join(finalDir, 'trainer_state.json'))) candidates.push(finalDir);
  let best: { dir: string; step: number } | undefined;
  for (const d of candidates) {
    const step = (JSON.parse(fs.readFileSync(path.join(d, 'trainer_state.json'), 'utf8')) as TrainerState).step;
    if (!best || step >= best.step) best = { dir: d, step };
  }
  return best?.dir;
}
