/**
 * Per-request logit processing before sampling, and the log-probabilities reported back (OpenAI `logprobs`).
 *
 * Order (as vLLM applies them): logit bias → repetition penalty (prompt and output tokens) → presence/frequency
 * penalties (output tokens) → min-tokens masking of stop tokens → min-p (relative to the most likely token at the
 * sampling temperature). Temperature, top-k and top-p are the Sampler's. Log-probabilities are those of the raw model
 * distribution (temperature 1, no processing), as OpenAI and vLLM report them.
 */

import { topIndices } from './sampling.js';

export interface LogitProcessing {
  /** Added to the logit of each listed token id (already clamped to [−100, 100] by the caller). */
  readonly logitBias?: ReadonlyMap<number, number>;
  /** OpenAI presence penalty in [−2, 2]: subtracted once from every token that has appeared in the output. */
  readonly presencePenalty?: number;
  /** OpenAI frequency penalty in [−2, 2]: subtracted per occurrence in the output. */
  readonly frequencyPenalty?: number;
  /** CTRL-style repetition penalty > 0 over prompt and output tokens: positive logits ÷ p, negative × p. 1 = off. */
  readonly repetitionPenalty?: number;
  /** Drop tokens whose probability is below minP × the top token's (at the sampling temperature). 0 = off. */
  readonly minP?: number;
}

/** True when `p` changes nothing, so the device sampler (which only knows temperature/top-k/top-p) can run. */
export function isIdentityProcessing(p: LogitProcessing): boolean {
  return (
    (p.logitBias?.size ?? 0) === 0 &&
    !p.presencePenalty &&
    !p.frequencyPenalty &&
    (p.repetitionPenalty ?? 1) === 1 &&
    !p.minP
  );
}

/** Token counts of one sequence's prompt and output, kept up to date by the scheduler. */
export class TokenCounts {
  readonly output = new Map<number, number>();
  private promptSet: Set<number> | undefined;

  constructor(private readonly prompt: readonly number[]) {}

  add(id: number): void {
    this.output.set(id, (this.output.get(id) ?? 0) + 1);
  }

  /** Distinct prompt tokens (built on first use: only the repetition penalty needs them). */
  promptTokens(): Set<number> {
    this.promptSet ??= new Set(this.prompt);
    return this.promptSet;
  }
}

/**
 * Applies `p` to `row` in place. `maskIds` (stop tokens while fewer than min_tokens were generated) are set to −∞.
 * `temperature` is the sampling temperature (min-p is defined at it; 0 = greedy, where min-p changes nothing).
 */
export function processLogits(row: Float32Array, p: LogitProcessing, counts: TokenCounts, temperature: number, maskIds?: readonly number[]): void {
  if (p.logitBias) for (const [id, b] of p.logitBias) if (id < row.length) row[id] += b;
  const rep = p.repetitionPenalty ?? 1;
  if (rep !== 1) {
    const seen = new Set(counts.promptTokens());
    for (const id of counts.output.keys()) seen.add(id);
    for (const id of seen) row[id] = row[id] > 0 ? row[id] / rep : row[id] * rep;
  }
  const pres = p.presencePenalty ?? 0, freq = p.frequencyPenalty ?? 0;
  if (pres !== 0 || freq !== 0) for (const [id, n] of counts.output) row[id] -= pres + freq * n;
  if (maskIds) for (const id of maskIds) if (id < row.length) row[id] = -Infinity;
  const minP = p.minP ?? 0;
  if (minP > 0 && temperature > 0) {
    let max = -Infinity;
    for (let i = 0; i < row.length; i++) if (row[i] > max) max = row[i];
    // p_i / p_max = exp((l_i − l_max) / T) < minP  ⇔  l_i < l_max + T·ln(minP)
    const floor = max + temperature * Math.log(minP);
    for (let i = 0; i < row.length; i++) if (row[i] < floor) row[i] = -Infinity;
  }
}

export interface TokenLogprob {
  readonly id: number;
  readonly logprob: number;
}

/** log p(id) under softmax(row), and the `top` most likely tokens with theirs (descending, ties to the lower id). */
export function logprobsOf(row: Float32Array, id: number, top: number): { logprob: number; top: TokenLogprob[] } {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > max) max = row[i];
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  const lse = max + Math.log(sum);
  const out: TokenLogprob[] = [];
  if (top > 0) {
    const m = Math.min(top, row.length);
    // topIndices sorts everything (needing room for all ids) when m is a large share of the row.
    const idx = topIndices(row, 0, row.length, m, new Int32Array(m * 8 >= row.length ? row.length : m));
    for (const i of idx) out.push({ id: i, logprob: row[i] - lse });
  }
  return { logprob: row[id] - lse, top: out };
}
