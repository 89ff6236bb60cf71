/**
 * What each rank (and the single-process reference) runs in the parallel tests: logits of every row of a prompt,
 * then a prompt prefilled in two chunks and a few greedy decode steps through the caches.
 */
import type { MiniMax01 } from '../../src/model/minimax01.js';
import { argmax } from '../../src/engine/sampling.js';

export interface ScriptInput {
  readonly prompt: readonly number[];
  readonly genPrompt: readonly number[];
  readonly steps: number;
}

export interface ScriptOutput {
  /** [prompt.length, V] */
  readonly logits: Float32Array;
  /** Logits before each greedy step, [steps, V]. */
  readonly genLogits: Float32Array;
  readonly ids: number[];
}

export function runScript(model: MiniMax01, input: ScriptInput): ScriptOutput {
  const V = model.config.vocabSize;
  const s = model.newSequence();
  const logits = model.forward([{ state: s, tokens: input.prompt }], { logits: 'all' }).logits;
  s.dispose();

  const g = model.newSequence();
  const split = Math.min(11, input.genPrompt.length - 1);
  model.forward([{ state: g, tokens: input.genPrompt.slice(0, split) }], { logits: 'none' });
  let row = model.forward([{ state: g, tokens: input.genPrompt.slice(split) }]).logits;
  const genLogits = new Float32Array(input.steps * V);
  const ids: number[] = [];
  for (let i = 0; i < input.steps; i++) {
    genLogits.set(row, i * V);
    const id = argmax(row);
    ids.push(id);
    if (i + 1 < input.steps) row = model.forward([{ state: g, tokens: [id] }]).logits;
  }
  g.dispose();
  return { logits, genLogits, ids };
}
