/**
 * Loads one rank of a tensor/expert-parallel model from a checkpoint directory: only this rank's slices of the
 * weights are read (see shard.ts), and the MiniMax01 it returns all-reduces over `parallel.comm`. Without
 * `parallel` it is the plain single-process fp32 model (the reference the sharded ranks are tested against).
 */

import type { Backend } from '../backend/backend.js';
import { loadModelConfig } from '../config/config.js';
import { MiniMax01, type CacheOptions } from '../model/minimax01.js';
import { lightningSlopes } from '../model/slopes.js';
import { loadWeights } from '../model/weights.js';
import { Checkpoint } from '../weights/checkpoint.js';
import { headRange, slotSelection, validateParallel, type ParallelContext } from './shard.js';

export async function loadRank(dir: string, backend: Backend, parallel?: ParallelContext, cache: CacheOptions = {}): Promise<MiniMax01> {
  const config = await loadModelConfig(dir);
  if (parallel) validateParallel(config, parallel);
  const heads = parallel ? headRange(config, parallel) : { start: 0, end: config.numHeads };
  const ckpt = await Checkpoint.open(dir);
  try {
    const weights = await loadWeights(backend, config, ckpt, {
      slopes: (l) => lightningSlopes(config.numHeads, l, config.numLayers).slice(heads.start, heads.end),
      shard: parallel && ((key) => slotSelection(config, parallel, key)),
    });
    return new MiniMax01(config, backend, weights, 'f32', cache, parallel);
  } finally {
    await ckpt.close();
  }
}
