/**
 * Fixture models on a backend the test chooses (a recording or memory-limited CpuBackend subclass), built the way
 * loadModel builds them: config, weights streamed through loadWeights, MiniMax01, and the Model front door.
 */
import path from 'node:path';
import type { Backend } from '../../src/backend/backend.js';
import { loadModelInfo, Model } from '../../src/engine/model.js';
import { MiniMax01 } from '../../src/model/minimax01.js';
import { lightningSlopes } from '../../src/model/slopes.js';
import { loadWeights } from '../../src/model/weights.js';
import { Checkpoint } from '../../src/weights/checkpoint.js';
import { FIXTURES } from './paths.js';

/** The forward pass of fixture `name` on `backend`, weights stored as `dtype` (the CPU computes in f32 either way). */
export async function fixtureNet(name: string, backend: Backend, dtype: 'f32' | 'bf16' = 'f32'): Promise<MiniMax01> {
  const info = await loadModelInfo(path.join(FIXTURES, name));
  const config = info.config;
  const ckpt = await Checkpoint.open(info.dir);
  try {
    const weights = await loadWeights(backend, config, ckpt, { dtype, slopes: (l) => lightningSlopes(config.numHeads, l, config.numLayers) });
    return new MiniMax01(config, backend, weights, 'f32');
  } finally {
    await ckpt.close();
  }
}

/** A Model over fixture `name` on `backend` (what loadModel returns, minus the backend choice). */
export async function fixtureModel(name: string, backend: Backend): Promise<Model> {
  const info = await loadModelInfo(path.join(FIXTURES, name));
  const net = await fixtureNet(name, backend);
  return new Model(info.dir, info.config, info.tokenizer, net, info.eosTokenIds, info.generationDefaults);
}
