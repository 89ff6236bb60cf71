/**
 * Continuous batching: many sequences advance together, one model forward per step.
 *
 * Each step packs a varlen batch under a token budget (`maxBatchTokens`): first one token for every decoding
 * sequence (so running streams never wait behind a prompt), then prefill chunks of admitted prompts in arrival
 * order with what budget is left (chunked prefill: a long prompt takes several steps). New requests join between
 * steps when a lightning state slot is free and the paged KV cache can hold their prompt; finished, stopped and
 * aborted sequences leave between steps and give their slot and blocks back at once.
 *
 * When a decoding sequence needs a KV block and none is free, the most recently admitted other sequence is
 * preempted by recompute (SERVING.md C2): its caches are freed and it goes back to the head of the queue with
 * prompt + generated tokens as its new prompt. Its sampling continues where it left off (same RNG stream, same
 * counts), so preemption shows only as latency and a counter.
 *
 * Sampling: per sequence on the host (temperature, top-k, top-p, min-p, penalties, logit bias, logprobs), or on the
 * device for a whole step when the backend can and no sequence in it needs more than temperature/top-k/top-p. Each
 * sequence draws from its own seeded RNG, one draw per token, so a request gives the same tokens alone or batched
 * (greedy: bit-identical on the CPU backend, whose ops do not depend on the batch).
 */

import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { SampleParams } from '../backend/backend.js';
import type { ForwardItem, MiniMax01 } from '../model/minimax01.js';
import type { SequenceState } from '../model/cache.js';
import { kvBlocksFor } from '../model/cache.js';
import { AbortError, CapacityError, InvalidArgumentError } from '../util/errors.js';
import { isIdentityProcessing, logprobsOf, processLogits, TokenCounts, type LogitProcessing, type TokenLogprob } from './logits.js';
import { Sampler, validateSampling, type SamplingParams } from './sampling.js';

export interface EngineRequest {
  /** Prompt token ids (non-empty, validated by the caller). */
  readonly prompt: readonly number[];
  /** Most tokens to generate (≥ 1). */
  readonly maxTokens: number;
  /** Stop tokens are ignored until this many tokens were generated. Default 0. */
  readonly minTokens?: number;
  /** Token ids that end the sequence (the model's EOS ids unless the caller ignores them, plus any extra). */
  readonly stopTokenIds: readonly number[];
  /** Temperature, top-k, top-p and seed (seed required: it makes the sequence replayable). */
  readonly sampling: SamplingParams & { readonly seed: number };
  readonly processing?: LogitProcessing;
  /** Report log-probabilities: the sampled token's and the `logprobs` most likely (0–20). Undefined = none. */
  readonly logprobs?: number;
}

export interface SampledToken {
  readonly id: number;
  /** Raw-model log-probability of `id` (with `logprobs`). */
  readonly logprob?: number;
  readonly top?: readonly TokenLogprob[];
}

export type EngineFinishReason = 'stop' | 'length';

export interface SequenceListener {
  /** The sequence got its caches and its first prefill chunk is about to run (queue time ends). */
  onScheduled?(): void;
  onToken(token: SampledToken): void;
  onFinish(reason: EngineFinishReason, usage: { promptTokens: number; completionTokens: number }): void;
  /** The sequence failed (the engine step threw); it has been removed. */
  onError(error: Error): void;
}

export interface SchedulerOptions {
  /** Token budget of one step (decode tokens + prefill chunk tokens). Default 512. */
  readonly maxBatchTokens?: number;
  /** Upper bound on prompt + generated tokens of one sequence (the model's context). */
  readonly maxModelLen?: number;
}

export interface SchedulerStats {
  readonly running: number;
  readonly waiting: number;
  readonly preemptions: number;
  readonly steps: number;
  readonly slotsUsed: number;
  readonly kvUsage: number;
}

/** A submitted sequence: abort it, or end it early as a stop (a stop string seen by the caller). */
export interface SequenceHandle {
  readonly id: number;
  /** Removes the sequence and frees its caches now; no further callbacks. */
  abort(): void;
}

interface Seq {
  readonly id: number;
  readonly req: EngineRequest;
  readonly listener: SequenceListener;
  /** Tokens fed so far count as the prompt for recompute after preemption: prompt + generated. */
  readonly tokens: number[];
  readonly promptLength: number;
  state: SequenceState | undefined;
  /** Index into `tokens` of the next token to feed. */
  fed: number;
  generated: number;
  readonly sampler: Sampler;
  readonly counts: TokenCounts;
  readonly deviceParams: Omit<SampleParams, 'step'>;
  readonly onDevice: boolean;
  done: boolean;
  scheduled: boolean;
  admittedAt: number;
}

export class Scheduler {
  private readonly waiting: Seq[] = [];
  private readonly running: Seq[] = [];
  private nextId = 1;
  private admissions = 0;
  private preempted = 0;
  private stepCount = 0;
  private wake: (() => void) | undefined;
  private stopped = false;
  private readonly maxBatchTokens: number;
  private readonly maxModelLen: number;

  constructor(
    private readonly net: MiniMax01,
    options: SchedulerOptions = {},
  ) {
    this.maxBatchTokens = options.maxBatchTokens ?? 512;
    if (!(Number.isSafeInteger(this.maxBatchTokens) && this.maxBatchTokens >= 1)) {
      throw new InvalidArgumentError(`maxBatchTokens must be an integer ≥ 1, got ${this.maxBatchTokens}`, { param: 'maxBatchTokens' });
    }
    this.maxModelLen = options.maxModelLen ?? net.config.maxPositionEmbeddings;
  }

  get stats(): SchedulerStats {
    const cache = this.net.cache;
    return {
      running: this.running.length,
      waiting: this.waiting.length,
      preemptions: this.preempted,
      steps: this.stepCount,
      slotsUsed: cache.slotsUsed,
      kvUsage: cache.kvUsage,
    };
  }

  /** True while sequences are running or waiting. */
  get busy(): boolean {
    return this.running.length > 0 || this.waiting.length > 0;
  }

  /**
   * The most tokens (prompt + generated) one sequence may reach: the context length, bounded by the whole KV cache.
   * A request over it can never run and is refused by `submit`.
   */
  get maxSequenceTokens(): number {
    return Math.min(this.maxModelLen, this.net.cache.maxTokensPerSequence);
  }

  /** Queues a sequence; callbacks fire from inside `step()`. Throws when the request could never fit. */
  submit(req: EngineRequest, listener: SequenceListener): SequenceHandle {
    if (req.prompt.length === 0) throw new InvalidArgumentError('the prompt is empty', { param: 'prompt' });
    if (!(Number.isSafeInteger(req.maxTokens) && req.maxTokens >= 1)) throw new InvalidArgumentError(`maxTokens must be an integer ≥ 1, got ${req.maxTokens}`, { param: 'maxTokens' });
    validateSampling(req.sampling);
    const total = req.prompt.length + req.maxTokens;
    if (total > this.maxSequenceTokens) {
      throw new CapacityError(
        `the request needs ${total} tokens of context (${req.prompt.length} prompt + ${req.maxTokens} to generate) but at most ${this.maxSequenceTokens} fit` +
          (this.maxSequenceTokens < this.maxModelLen ? ` in the KV cache` : ''),
      );
    }
    const s = req.sampling;
    const seq: Seq = {
      id: this.nextId++,
      req,
      listener,
      tokens: [...req.prompt],
      promptLength: req.prompt.length,
      state: undefined,
      fed: 0,
      generated: 0,
      sampler: new Sampler(s),
      counts: new TokenCounts(req.prompt),
      deviceParams: { temperature: s.temperature ?? 1, topK: s.topK ?? 0, topP: s.topP ?? 1, seed: s.seed },
      onDevice: req.logprobs === undefined && isIdentityProcessing(req.processing ?? {}) && !(req.minTokens && req.stopTokenIds.length > 0),
      done: false,
      scheduled: false,
      admittedAt: 0,
    };
    this.waiting.push(seq);
    this.wake?.();
    return { id: seq.id, abort: () => this.remove(seq) };
  }

  /**
   * Runs steps until `signal` aborts (or stop() is called), sleeping while there is no work. Yields to the event
   * loop between steps so I/O (new requests, aborts, streaming) is served; `afterStep` runs after each step.
   */
  async run(options: { signal?: AbortSignal; afterStep?: () => void } = {}): Promise<void> {
    const { signal, afterStep } = options;
    const onAbort = (): void => this.wake?.();
    signal?.addEventListener('abort', onAbort);
    try {
      while (!this.stopped && !signal?.aborted) {
        if (!this.busy) {
          await new Promise<void>((resolve) => (this.wake = resolve));
          this.wake = undefined;
          continue;
        }
        this.step();
        afterStep?.();
        await yieldToEventLoop();
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Ends run() after the current step. */
  stop(): void {
    this.stopped = true;
    this.wake?.();
  }

  /** Aborts every sequence (running and waiting) and frees their caches. */
  abortAll(): void {
    for (const s of [...this.running, ...this.waiting]) {
      this.remove(s);
      s.listener.onError(new AbortError('the engine is shutting down'));
    }
  }

  /** One forward pass over the next batch. Returns false when there was nothing to do. */
  step(): boolean {
    this.admit();
    const batch = this.plan();
    if (batch.length === 0) return false;
    this.stepCount++;
    const items: ForwardItem[] = batch.map((b) => ({ state: b.seq.state!, tokens: b.seq.tokens.slice(b.seq.fed, b.seq.fed + b.count), logits: b.sample }));
    const sampling = batch.filter((b) => b.sample).map((b) => b.seq);
    try {
      for (const b of batch) {
        if (!b.seq.scheduled) {
          b.seq.scheduled = true;
          b.seq.listener.onScheduled?.();
        }
      }
      if (sampling.length > 0 && this.net.canSampleOnDevice && sampling.every((s) => s.onDevice)) {
        const ids = this.net.forwardSample(items, sampling.map((s) => ({ ...s.deviceParams, step: s.generated })));
        for (const b of batch) b.seq.fed += b.count;
        sampling.forEach((s, i) => this.emit(s, { id: ids[i] }));
      } else {
        const r = this.net.forward(items, { logits: sampling.length > 0 ? 'last' : 'none' });
        for (const b of batch) b.seq.fed += b.count;
        sampling.forEach((s, i) => this.emit(s, this.sampleHost(s, r.logits.subarray(i * r.vocabSize, (i + 1) * r.vocabSize))));
      }
    } catch (err) {
      // A failed step leaves the batch's caches in an unknown state: fail those sequences, keep serving the rest.
      const e = err instanceof Error ? err : new Error(String(err));
      for (const b of batch) {
        if (b.seq.done) continue;
        this.remove(b.seq);
        b.seq.listener.onError(e);
      }
    }
    return true;
  }

  // ---- internals ----

  /** Moves waiting sequences into the running set while a slot is free and the KV cache can hold their prompt. */
  private admit(): void {
    const cache = this.net.cache;
    while (this.waiting.length > 0) {
      const seq = this.waiting[0];
      // Room for the whole prompt plus the first generated token, so admission never has to preempt at once.
      const need = kvBlocksFor(seq.tokens.length + 1);
      if (cache.hasSoftmaxLayers && need > cache.kvBlocksAvailable) break;
      const state = cache.tryAcquire();
      if (!state) break;
      this.waiting.shift();
      seq.state = state;
      seq.fed = 0;
      seq.admittedAt = this.admissions++;
      this.running.push(seq);
    }
  }

  /** The step's batch: a decode token per decoding sequence, then prefill chunks under the budget. */
  private plan(): { seq: Seq; count: number; sample: boolean }[] {
    const batch: { seq: Seq; count: number; sample: boolean }[] = [];
    let budget = this.maxBatchTokens;
    // Decoding: its only unfed token is the one it sampled last. Everything else still has prompt to prefill.
    const isDecoding = (s: Seq): boolean => s.tokens.length - s.fed === 1 && s.generated > 0;
    const decoding = this.running.filter(isDecoding);
    const prefilling = this.running.filter((s) => !isDecoding(s));
    for (const seq of decoding) {
      if (seq.done || !seq.state) continue;
      if (!this.ensureRoom(seq, seq.state.position + 1)) continue;
      batch.push({ seq, count: 1, sample: true });
      budget--;
    }
    for (const seq of prefilling) {
      if (budget <= 0) break;
      if (seq.done || !seq.state) continue;
      const left = seq.tokens.length - seq.fed;
      const count = Math.min(left, budget);
      if (!this.ensureRoom(seq, seq.state.position + count + (count === left ? 1 : 0))) continue;
      batch.push({ seq, count, sample: count === left });
      budget -= count;
    }
    return batch.filter((b) => !b.seq.done && b.seq.state);
  }

  /** Reserves KV room for `tokens` rows of `seq`, preempting later-admitted sequences if needed. */
  private ensureRoom(seq: Seq, tokens: number): boolean {
    const state = seq.state!;
    while (!state.canReserve(tokens)) {
      // The newest admission yields first, as in vLLM; when that is `seq` itself, it waits for the older ones.
      const victim = this.running.filter((s) => s.state).sort((a, b) => b.admittedAt - a.admittedAt)[0];
      this.preempt(victim);
      if (victim === seq) return false;
    }
    state.reserve(tokens);
    return true;
  }

  /** Frees `seq`'s caches and requeues it at the head with everything it has seen as its prompt. */
  private preempt(seq: Seq): void {
    seq.state?.dispose();
    seq.state = undefined;
    seq.fed = 0;
    this.running.splice(this.running.indexOf(seq), 1);
    this.waiting.unshift(seq);
    this.preempted++;
  }

  private sampleHost(seq: Seq, raw: Float32Array): SampledToken {
    const p = seq.req.processing ?? {};
    const mask = seq.generated < (seq.req.minTokens ?? 0) ? seq.req.stopTokenIds : undefined;
    let row = raw;
    if (!isIdentityProcessing(p) || mask) {
      row = Float32Array.from(raw);
      processLogits(row, p, seq.counts, seq.req.sampling.temperature ?? 1, mask);
    }
    const id = seq.sampler.sample(row);
    if (seq.req.logprobs === undefined) return { id };
    const lp = logprobsOf(raw, id, seq.req.logprobs);
    return { id, logprob: lp.logprob, top: lp.top };
  }

  /** Records a sampled token, tells the listener, and finishes the sequence on a stop token or the budget. */
  private emit(seq: Seq, token: SampledToken): void {
    if (seq.done) return;
    seq.generated++;
    seq.counts.add(token.id);
    seq.tokens.push(token.id);
    seq.listener.onToken(token);
    if (seq.done) return; // the listener aborted it
    // Stop tokens are masked while fewer than min_tokens were generated, so one sampled here always counts.
    const stop = seq.req.stopTokenIds.includes(token.id);
    if (stop || seq.generated >= seq.req.maxTokens || seq.tokens.length >= this.maxModelLen) {
      this.remove(seq);
      seq.listener.onFinish(stop ? 'stop' : 'length', { promptTokens: seq.promptLength, completionTokens: seq.generated });
    }
  }

  private remove(seq: Seq): void {
    if (seq.done) return;
    seq.done = true;
    seq.state?.dispose();
    seq.state = undefined;
    const r = this.running.indexOf(seq);
    if (r >= 0) this.running.splice(r, 1);
    const w = this.waiting.indexOf(seq);
    if (w >= 0) this.waiting.splice(w, 1);
  }
}
