/**
 * A training run from its config file: tokenizer, tokenised corpus (cached), train/validation split, batch loader,
 * backend, and a Trainer — fresh, or resumed from the newest checkpoint of the run's output directory. Shared by
 * `lmoe train` and bench/train.ts.
 */

import fs from 'node:fs';
import path from 'node:path';
import { Tokenizer } from '../tokenizer/tokenizer.js';
import { ConfigError } from '../util/errors.js';
import type { TrainBackend } from './backend.js';
import type { TrainConfig } from './config.js';
import { BatchLoader, evaluationBatches, loadCorpus, splitDocuments, type BatchLoaderState } from './data.js';
import type { TrainBatch } from './model.js';
import { latestCheckpoint, Trainer, type TrainerOptions } from './trainer.js';

export interface PreparedRun {
  readonly trainer: Trainer;
  readonly loader: BatchLoader;
  readonly validation: TrainBatch[];
  readonly tokenizer: Tokenizer;
  /** The checkpoint resumed from, if any. */
  readonly resumedFrom?: string;
  readonly trainTokens: number;
  readonly documents: { train: number; validation: number };
}

export interface PrepareOptions {
  /** true: resume from the newest checkpoint in run.out (fresh when there is none); a path: that checkpoint. */
  readonly resume?: boolean | string;
  /** Overrides run.device. */
  readonly device?: 'cpu' | 'cuda';
  /** Overrides optim.steps (the schedule's length). */
  readonly steps?: number;
  readonly onStatus?: (message: string) => void;
}

export async function createTrainBackend(device: 'cpu' | 'cuda'): Promise<TrainBackend> {
  if (device === 'cpu') {
    const { CpuTrainBackend } = await import('./cpu/cpu-train-backend.js');
    return new CpuTrainBackend();
  }
  const { CudaTrainBackend } = await import('./cuda/cuda-train-backend.js');
  return new CudaTrainBackend();
}

export function trainerOptions(cfg: TrainConfig, tokenizerDir: string, steps?: number): TrainerOptions {
  const o = cfg.optim, r = cfg.run;
  return {
    config: cfg.model,
    optim: {
      lr: o.lr, minLr: o.minLr ?? o.lr / 10, warmupSteps: o.warmupSteps, totalSteps: steps ?? o.steps, beta1: o.beta1, beta2: o.beta2, eps: o.eps,
      weightDecay: o.weightDecay, clip: o.clip, accumulate: o.accumulate, auxLossCoef: o.auxLossCoef, zLossCoef: o.zLossCoef,
    },
    seed: r.seed, recompute: r.recompute, initStd: r.initStd, out: r.out, logEvery: r.logEvery, evalEvery: r.evalEvery, saveEvery: r.saveEvery,
    saveDtype: r.saveDtype === 'bfloat16' ? 'BF16' : 'F32',
    tokenizerDir,
    runConfig: { file: cfg.file, model: cfg.modelJson, data: cfg.data, optim: cfg.optim, run: cfg.run },
  };
}

export async function prepareRun(cfg: TrainConfig, o: PrepareOptions = {}): Promise<PreparedRun> {
  const status = o.onStatus ?? (() => {});
  const tokDir = fs.existsSync(cfg.tokenizer) && fs.statSync(cfg.tokenizer).isFile() ? path.dirname(cfg.tokenizer) : cfg.tokenizer;
  const tokenizer = await Tokenizer.fromDir(tokDir);
  if (tokenizer.vocabSize > cfg.model.vocabSize) {
    throw new ConfigError(`${cfg.file}: the tokenizer has ${tokenizer.vocabSize} tokens but the model's vocab_size is ${cfg.model.vocabSize}`, { file: cfg.file, field: 'model.vocab_size' });
  }
  status(`tokenising ${cfg.data.train.length} file(s)`);
  const corpus = await loadCorpus(cfg.data.train, tokenizer, { cacheDir: cfg.data.cacheDir ?? path.join(cfg.run.out, 'cache') });
  const split = splitDocuments(corpus, { validationFraction: cfg.data.valFraction, seed: cfg.run.seed });
  const loaderOptions = { tokensPerBatch: cfg.data.tokensPerBatch, maxSeqLen: cfg.data.maxSeqLen, seed: cfg.run.seed };
  const validation: TrainBatch[] = [];
  if (split.validation.documents.length > 0) {
    for (const b of evaluationBatches(split.validation, { tokensPerBatch: cfg.data.tokensPerBatch, maxSeqLen: cfg.data.maxSeqLen })) {
      validation.push(b);
      if (validation.length >= cfg.run.evalBatches) break;
    }
  }
  const backend = await createTrainBackend(o.device ?? cfg.run.device);
  const options = trainerOptions(cfg, tokDir, o.steps);
  const from = typeof o.resume === 'string' ? o.resume : o.resume ? latestCheckpoint(cfg.run.out) : undefined;
  let trainer: Trainer;
  let loader: BatchLoader;
  if (from) {
    status(`resuming from ${from}`);
    const r = await Trainer.resume(backend, options, from);
    trainer = r.trainer;
    loader = BatchLoader.fromState(split.train, loaderOptions, r.state.data as BatchLoaderState);
  } else {
    trainer = Trainer.create(backend, options);
    loader = new BatchLoader(split.train, loaderOptions);
  }
  return {
    trainer, loader, validation, tokenizer, resumedFrom: from, trainTokens: split.train.tokenCount,
    documents: { train: split.train.documents.length, validation: split.validation.documents.length },
  };
}
