/**
 * The training run's configuration file (`lmoe train --config FILE`), validated with zod. Paths inside it are
 * relative to the file's directory. Example (docs/training.md has the whole list):
 *
 *   {
 *     "model": { "hidden_size": 256, "num_hidden_layers": 8, "attn_type_list": [0,0,0,1,0,0,0,1], ... },
 *     "tokenizer": "tokenizer/",
 *     "data": { "train": ["data/corpus.jsonl"], "maxSeqLen": 512, "tokensPerBatch": 16384 },
 *     "optim": { "lr": 3e-3, "steps": 2000, "warmupSteps": 100 },
 *     "run": { "out": "runs/small", "device": "cuda", "seed": 1 }
 *   }
 */

import path from 'node:path';
import { z } from 'zod';
import { parseModelConfig, readJsonFile, type ModelConfig } from '../config/config.js';
import { ConfigError } from '../util/errors.js';

const posInt = z.number().int().min(1);
const nonNeg = z.number().min(0);

const schema = z
  .object({
    /** An original- or native-layout config.json object, or a path to one. */
    model: z.union([z.string(), z.record(z.string(), z.unknown())]),
    /** A directory with tokenizer.json (and optionally tokenizer_config.json), or a tokenizer.json path. */
    tokenizer: z.string(),
    data: z.strictObject({
      train: z.array(z.string()).min(1),
      /** Fraction of documents held out for validation. */
      valFraction: z.number().min(0).max(0.5).default(0.01),
      maxSeqLen: posInt.default(512),
      tokensPerBatch: posInt.default(8192),
      /** Where the tokenised corpus is cached (default: run.out/cache). */
      cacheDir: z.string().optional(),
    }),
    optim: z
      .strictObject({
        lr: z.number().positive().default(3e-3),
        minLr: nonNeg.optional(),
        warmupSteps: z.number().int().min(0).default(100),
        steps: posInt,
        beta1: z.number().min(0).max(1).default(0.9),
        beta2: z.number().min(0).max(1).default(0.95),
        eps: z.number().positive().default(1e-8),
        weightDecay: nonNeg.default(0.1),
        clip: nonNeg.default(1),
        /** Micro-batches per optimiser step. */
        accumulate: posInt.default(1),
        auxLossCoef: nonNeg.optional(),
        zLossCoef: nonNeg.default(0),
      }),
    run: z
      .strictObject({
        out: z.string(),
        device: z.enum(['cpu', 'cuda']).default('cpu'),
        seed: z.number().int().min(0).default(1),
        recompute: z.boolean().default(false),
        logEvery: posInt.default(10),
        evalEvery: z.number().int().min(0).default(200),
        evalBatches: posInt.default(4),
        saveEvery: z.number().int().min(0).default(500),
        saveDtype: z.enum(['float32', 'bfloat16']).default('float32'),
        initStd: z.number().positive().default(0.02),
      }),
  })
  .strict();

export type TrainConfigFile = z.infer<typeof schema>;

export interface TrainConfig extends Omit<TrainConfigFile, 'model'> {
  readonly model: ModelConfig;
  /** The model section as written (for the run's record). */
  readonly modelJson: Record<string, unknown>;
  readonly file: string;
}

/** Reads and validates a training config; every error names the file and the field. */
export async function loadTrainConfig(file: string): Promise<TrainConfig> {
  const raw = await readJsonFile(file, ConfigError);
  const r = schema.safeParse(raw);
  if (!r.success) {
    const issue = r.error.issues[0];
    const field = issue.path.join('.');
    throw new ConfigError(`${file}: ${field ? `"${field}": ` : ''}${issue.message}`, { file, field });
  }
  const c = r.data;
  const dir = path.dirname(path.resolve(file));
  const rel = (p: string): string => path.resolve(dir, p);
  let modelJson: Record<string, unknown>;
  let modelFile = `${file} (model)`;
  if (typeof c.model === 'string') {
    modelFile = rel(c.model);
    modelJson = (await readJsonFile(modelFile, ConfigError)) as Record<string, unknown>;
  } else modelJson = { model_type: 'minimax_text_01', postnorm: true, ...c.model };
  const model = parseModelConfig(modelJson, modelFile);
  return {
    ...c,
    model,
    modelJson,
    file: path.resolve(file),
    tokenizer: rel(c.tokenizer),
    data: { ...c.data, train: c.data.train.map(rel), cacheDir: c.data.cacheDir === undefined ? undefined : rel(c.data.cacheDir) },
    run: { ...c.run, out: rel(c.run.out) },
  };
}
