/**
 * The generation loop: prefill the prompt (in chunks), then sample one token at a time until a stop token, a stop
 * string, the token budget or an abort. Text is streamed through an incremental detokenizer (never half a UTF-8
 * character) and a stop-string matcher (never a partial stop string).
 */

import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { IncrementalDecoder } from '../tokenizer/index.js';
import { AbortError, InternalError, InvalidArgumentError } from '../util/errors.js';
import { MAX_PREFILL_CHUNK } from './memory-plan.js';
import { Sampler, type SamplingParams } from './sampling.js';
import type { Session } from './session.js';
import { StopStringMatcher } from './stop.js';

export interface GenerateOptions extends SamplingParams {
  /** Most tokens to generate (≥ 1). Default 256. */
  readonly maxTokens?: number;
  /** Literal strings that end generation; the output stops just before the first one. At most 16. */
  readonly stop?: readonly string[];
  /** Extra token ids that end generation (the model's EOS ids are always included unless ignoreEos). */
  readonly stopTokenIds?: readonly number[];
  /** Keep generating through EOS tokens (benchmarks, parity checks). Default false. */
  readonly ignoreEos?: boolean;
  /**
   * Tokens per prefill forward pass; bounds activation memory for long prompts. Default: from the memory plan
   * (src/engine/memory-plan.ts), MAX_PREFILL_CHUNK (8192) unless the device is short of memory.
   */
  readonly prefillChunkSize?: number;
  /**
   * Cancels generation between forward passes (prefill chunks and decode steps); the promise / iterator rejects
   * with AbortError.
   */
  readonly signal?: AbortSignal;
  /**
   * Called after each prefill chunk with the prompt tokens done so far (the last call has done = total). On the GPU
   * work is queued asynchronously, so a call can run slightly ahead of the device.
   */
  readonly onPrefillProgress?: (progress: PrefillProgress) => void;
  /** Include the log-probability of each sampled token in stream events. Default false. */
  readonly logprobs?: boolean;
}

/** Progress of a prompt's prefill, reported after each chunk. */
export interface PrefillProgress {
  /** Prompt tokens prefilled so far. */
  readonly done: number;
  /** Prompt tokens in all. */
  readonly total: number;
  /** done / seconds since the prefill started. */
  readonly tokensPerSecond: number;
  /** (total − done) / tokensPerSecond: 0 at the end. */
  readonly etaSeconds: number;
}

export type FinishReason = 'stop' | 'length';

export interface TokenEvent {
  readonly type: 'token';
  /** The sampled token id. */
  readonly id: number;
  /** Text released by this token: may be empty (held back for UTF-8 or a possible stop string). */
  readonly text: string;
  /** log p(id) under the unmodified distribution (temperature 1), when `logprobs` was requested. */
  readonly logprob?: number;
}

export interface DoneEvent {
  readonly type: 'done';
  /** The last piece of text, released at the end. */
  readonly text: string;
  readonly finishReason: FinishReason;
  readonly promptTokens: number;
  readonly completionTokens: number;
}

export type StreamEvent = TokenEvent | DoneEvent;

export interface GenerationResult {
  /** Generated token ids (a stop token that ended generation is included). */
  readonly ids: number[];
  /** Generated text, without the stop token or stop string. */
  readonly text: string;
  readonly finishReason: FinishReason;
  readonly promptTokens: number;
  readonly completionTokens: number;
}

export interface GenerationContext {
  readonly session: Session;
  readonly prompt: readonly number[];
  /** Stop tokens of the model (EOS), applied unless ignoreEos. */
  readonly eosTokenIds: readonly number[];
  /** Detokenizer for the generated ids; without one, events carry no text. */
  readonly decoder: IncrementalDecoder | undefined;
  /** Upper bound on prompt + generated tokens. */
  readonly maxContext: number;
  /**
   * Called once before the prefill with the context the request needs (prompt + maxTokens) and the caller's chunk
   * size: checks that it fits in memory (a CapacityError when not), reserves the caches, and returns the prefill
   * chunk size to use. Without it, the caller's chunk size or MAX_PREFILL_CHUNK.
   */
  readonly preparePrefill?: (contextTokens: number, prefillChunkSize: number | undefined) => number;
}

export function validateGenerateOptions(o: GenerateOptions): void {
  if (o.maxTokens !== undefined && !(Number.isSafeInteger(o.maxTokens) && o.maxTokens >= 1)) {
    throw new InvalidArgumentError(`maxTokens must be an integer ≥ 1, got ${o.maxTokens}`, { param: 'maxTokens' });
  }
  if (o.stop !== undefined) {
    if (!Array.isArray(o.stop) || o.stop.length > 16 || o.stop.some((s) => typeof s !== 'string' || s.length === 0)) {
      throw new InvalidArgumentError('stop must be a list of at most 16 non-empty strings', { param: 'stop' });
    }
  }
  if (o.stopTokenIds !== undefined && o.stopTokenIds.some((id) => !Number.isInteger(id) || id < 0)) {
    throw new InvalidArgumentError('stopTokenIds must be non-negative integers', { param: 'stopTokenIds' });
  }
  if (o.prefillChunkSize !== undefined && !(Number.isSafeInteger(o.prefillChunkSize) && o.prefillChunkSize >= 1)) {
    throw new InvalidArgumentError(`prefillChunkSize must be an integer ≥ 1, got ${o.prefillChunkSize}`, { param: 'prefillChunkSize' });
  }
}

export async function* generateStream(ctx: GenerationContext, options: GenerateOptions): AsyncGenerator<StreamEvent, void, undefined> {
  validateGenerateOptions(options);
  const { session, prompt, decoder } = ctx;
  const maxTokens = options.maxTokens ?? 256;
  if (prompt.length === 0) throw new InvalidArgumentError('the prompt is empty', { param: 'prompt' });
  if (prompt.length + maxTokens > ctx.maxContext) {
    throw new InvalidArgumentError(
      `This model's maximum context length is ${ctx.maxContext} tokens; the prompt has ${prompt.length} and maxTokens asks for ${maxTokens} more`,
      { param: 'maxTokens' },
    );
  }
  const sampler = new Sampler(options);
  const stopIds = new Set<number>([...(options.ignoreEos ? [] : ctx.eosTokenIds), ...(options.stopTokenIds ?? [])]);
  const stops = new StopStringMatcher(options.stop ?? []);
  const signal = options.signal;
  // On a backend that samples on the device only the token id crosses to the host each step; logprobs need the
  // full row on the host, so they keep the host sampler.
  const onDevice = session.canSampleOnDevice && !options.logprobs;
  const deviceSampling = {
    temperature: options.temperature ?? 1,
    topK: options.topK ?? 0,
    topP: options.topP ?? 1,
    seed: options.seed ?? Math.floor(Math.random() * 2 ** 32),
  };

  const checkAbort = (): void => {
    if (signal?.aborted) throw new AbortError('generation was aborted');
  };
  checkAbort(); // before reserving anything
  const chunk = ctx.preparePrefill?.(prompt.length + maxTokens, options.prefillChunkSize) ?? options.prefillChunkSize ?? MAX_PREFILL_CHUNK;

  /** Feeds `tokens` and returns the next token (and its logprob when requested). */
  const step = (tokens: readonly number[], index: number): { id: number; logprob?: number } => {
    if (onDevice) return { id: session.appendAndSample(tokens, deviceSampling, index) };
    const logits = session.append(tokens).row(0);
    const id = sampler.sample(logits);
    return options.logprobs ? { id, logprob: logSoftmaxAt(logits, id) } : { id };
  };

  const prefillStarted = performance.now();
  const reportPrefill = (done: number): void => {
    if (!options.onPrefillProgress) return;
    const tokensPerSecond = done / Math.max((performance.now() - prefillStarted) / 1000, 1e-9);
    options.onPrefillProgress({ done, total: prompt.length, tokensPerSecond, etaSeconds: (prompt.length - done) / tokensPerSecond });
  };

  // Prefill all but the last chunk without logits; the last chunk yields the first token. Yielding to the event
  // loop between chunks lets an abort (a timer, a client disconnect, Ctrl-C) land before the next chunk starts.
  let i = 0;
  for (; i + chunk < prompt.length; i += chunk) {
    checkAbort();
    session.append(prompt.slice(i, i + chunk), { logits: 'none' });
    reportPrefill(i + chunk);
    await yieldToEventLoop();
  }
  checkAbort();
  let next = step(prompt.slice(i), 0);
  reportPrefill(prompt.length);

  let generated = 0;
  let finishReason: FinishReason = 'length';
  for (;;) {
    const { id, logprob } = next;
    generated++;
    if (stopIds.has(id)) {
      finishReason = 'stop';
      yield { type: 'token', id, text: '', ...(logprob !== undefined ? { logprob } : {}) };
      break;
    }
    const text = decoder ? stops.push(decoder.push(id)) : '';
    yield { type: 'token', id, text, ...(logprob !== undefined ? { logprob } : {}) };
    if (stops.done) {
      finishReason = 'stop';
      break;
    }
    if (generated >= maxTokens) break;
    await yieldToEventLoop();
    checkAbort();
    next = step([id], generated);
  }
  const tail = decoder && !stops.done ? stops.push(decoder.flush()) + stops.flush() : '';
  yield { type: 'done', text: tail, finishReason, promptTokens: prompt.length, completionTokens: generated };
}

/** Runs generateStream to the end and collects the result. */
export async function generateAll(ctx: GenerationContext, options: GenerateOptions): Promise<GenerationResult> {
  const ids: number[] = [];
  let text = '';
  for await (const ev of generateStream(ctx, options)) {
    text += ev.text;
    if (ev.type === 'token') ids.push(ev.id);
    else return { ids, text, finishReason: ev.finishReason, promptTokens: ev.promptTokens, completionTokens: ev.completionTokens };
  }
  throw new InternalError('generation ended without a done event');
}

function logSoftmaxAt(logits: Float32Array, id: number): number {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  return logits[id] - max - Math.log(sum);
}
