/**
 * A Session is one sequence's caches plus the model that advances them: append tokens (a prompt, a prefill chunk,
 * or one generated token) and get logits. Prefill and decode are the same call; chunking a prompt gives the same
 * result as feeding it whole (lightning state carried exactly, KV cache appended).
 */

import type { SampleParams } from '../backend/backend.js';
import type { MiniMax01, TraceHook } from '../model/minimax01.js';
import type { SequenceState } from '../model/cache.js';
import { DisposedError } from '../util/errors.js';

export interface AppendOptions {
  /** Which positions get logits. Default 'last'. */
  readonly logits?: 'all' | 'last' | 'none';
  /** Receives every named intermediate of the forward pass (debugging, parity tests). */
  readonly trace?: TraceHook;
}

/** Logits of several positions: row r is data[r·vocabSize, (r+1)·vocabSize). */
export interface LogitRows {
  readonly data: Float32Array;
  readonly rows: number;
  readonly vocabSize: number;
  /** Row r as a view. */
  row(r: number): Float32Array;
}

export class Session {
  private readonly state: SequenceState;
  private disposed = false;

  constructor(private readonly model: MiniMax01) {
    this.state = model.newSequence();
  }

  /** Tokens consumed so far (the position of the next token). */
  get position(): number {
    return this.state.position;
  }

  /** Appends tokens to the sequence and returns the requested logits. */
  append(tokens: ArrayLike<number>, options: AppendOptions = {}): LogitRows {
    if (this.disposed) throw new DisposedError('Session');
    const r = this.model.forward([{ state: this.state, tokens }], options);
    return logitRows(r.logits, r.rows, r.vocabSize);
  }

  /**
   * Makes room in the KV cache for `tokens` positions now, growing the pool in one allocation to exactly what is
   * needed, so that a long prefill never regrows (and copies) it midway. A CapacityError when the pool cannot.
   */
  reserve(tokens: number): void {
    if (this.disposed) throw new DisposedError('Session');
    this.state.reserve(tokens, 'exact');
  }

  /** KV cache blocks this sequence holds. */
  get kvBlocks(): number {
    return this.state.kvBlocks;
  }

  /** True when the backend samples on the device (only token ids cross to the host). */
  get canSampleOnDevice(): boolean {
    return this.model.canSampleOnDevice;
  }

  /**
   * Appends tokens and samples the next token on the device from the last position's logits. `step` is the index
   * of the sampled token in the generation (the RNG counter): the same seed and steps give the same tokens.
   */
  appendAndSample(tokens: ArrayLike<number>, sampling: Omit<SampleParams, 'step'>, step: number): number {
    if (this.disposed) throw new DisposedError('Session');
    return this.model.forwardSample([{ state: this.state, tokens }], [{ ...sampling, step }])[0];
  }

  /** The fp32 lightning state S of lightning layer `layer`, [H, Dh, Dh] indexed [key dim, value dim]. */
  lightningState(layer: number): Float32Array {
    if (this.disposed) throw new DisposedError('Session');
    return this.state.lightningState(layer);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.state.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

export function logitRows(data: Float32Array, rows: number, vocabSize: number): LogitRows {
  return { data, rows, vocabSize, row: (r) => data.subarray(r * vocabSize, (r + 1) * vocabSize) };
}
