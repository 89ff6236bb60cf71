/**
 * POST /v1/chat/completions and /v1/completions: validated request → prompt ids → context checks → `n` engine
 * sequences → an OpenAI response, either one JSON body or an SSE stream (SERVING.md §4, §5).
 *
 * Streaming contract: every chunk carries the same id and created; a choice's first chunk has `role: "assistant"`
 * (chat); deltas never split a UTF-8 character or release part of a stop string; each choice ends with exactly one
 * chunk with a finish_reason; with `stream_options.include_usage` every chunk has `usage: null` and one last chunk
 * with `choices: []` carries the usage; then `data: [DONE]`. A failure after the stream started is one error event,
 * then `[DONE]`. Errors before the first byte are ordinary HTTP errors.
 */

import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { Tokenizer } from '../tokenizer/index.js';
import { CapacityError } from '../util/errors.js';
import { badRequest, errorBody, HttpError, toHttpError } from './errors.js';
import { startRun, type ChoiceDelta, type ChoiceEnd, type TokenInfo } from './generation.js';
import {
  COMPLETION_DEFAULT_MAX_TOKENS,
  contextLengthError,
  maxTokensTooLargeError,
  promptTooLongError,
  type ChatRequest,
  type CompletionRequest,
  type ServerLimits,
} from './protocol.js';
import { SseWriter, StreamClosedError } from './sse.js';
import type { Engine } from './engine-client.js';
import type { ServerMetrics } from './metrics.js';

export interface CompletionContext {
  readonly engine: Engine;
  readonly tokenizer: Tokenizer;
  readonly eosTokenIds: readonly number[];
  readonly modelName: string;
  readonly maxModelLen: number;
  readonly limits: ServerLimits;
  readonly metrics: ServerMetrics;
  readonly sse: { stallTimeoutMs: number; pingIntervalMs: number };
  /** Resolves when the server wants every request to end now (shutdown timeout): streams get an error event. */
  readonly shutdown: Promise<void>;
  /** Called when the client went away before the end. */
  onDisconnect(): void;
  /** Prompt tokens now queued (for the admission bound): +tokens when submitted, −tokens when scheduled. */
  queuedTokens(delta: number): void;
}

type Req = ChatRequest | CompletionRequest;

/** Tokenizes the request's prompt and applies the §4 context rules; returns the ids and the max_tokens to use. */
export function preparePrompt(ctx: CompletionContext, req: Req): { ids: number[]; maxTokens: number } {
  const N = ctx.maxModelLen;
  if (req.maxTokens !== undefined && req.maxTokens > N) throw maxTokensTooLargeError(N, req.maxTokens);
  let ids: number[];
  if (req.kind === 'chat') {
    // V5: parseChatRequest has already bounded the messages' total length (limits.maxPromptChars).
    ids = ctx.tokenizer.encodeChat(req.messages, { tools: req.tools, addGenerationPrompt: true });
  } else if (typeof req.prompt === 'string') {
    // Length already bounded by parseCompletionRequest (V5). Caller text never becomes control tokens (T5):
    // special-token strings are encoded as plain text.
    ids = ctx.tokenizer.encode(req.prompt, { parseSpecialTokens: false });
  } else {
    ids = req.prompt;
  }
  if (ids.length === 0) throw badRequest('the prompt is empty', req.kind === 'chat' ? 'messages' : 'prompt');
  if (ids.length >= N) throw promptTooLongError(N, ids.length, req.kind === 'chat' ? 'messages' : 'prompt');
  const defaultMax = req.kind === 'chat' ? Math.min(ctx.limits.maxTokensCap, N - ids.length) : COMPLETION_DEFAULT_MAX_TOKENS;
  const maxTokens = req.maxTokens ?? defaultMax;
  if (ids.length + maxTokens > N) throw contextLengthError(N, ids.length, maxTokens);
  const fit = ctx.engine.info.maxSequenceTokens;
  if (ids.length + maxTokens > fit) {
    throw badRequest(
      `the request needs ${ids.length + maxTokens} tokens of KV cache (${ids.length} prompt + ${maxTokens} completion) but the server's whole cache holds ${fit}; reduce the prompt or max_tokens`,
      'max_tokens',
      'context_length_exceeded',
    );
  }
  return { ids, maxTokens };
}

interface ChoiceState {
  text: string;
  tokens: TokenInfo[];
  end?: ChoiceEnd;
}

/** Runs the request to the end, writing the response. Never throws: errors become HTTP errors or SSE error events. */
export async function runCompletion(ctx: CompletionContext, req: Req, res: ServerResponse, prompt: { ids: number[]; maxTokens: number }, arrival: number): Promise<void> {
  const id = (req.kind === 'chat' ? 'chatcmpl-' : 'cmpl-') + randomUUID().replace(/-/g, '');
  const created = Math.floor(Date.now() / 1000);
  const chat = req.kind === 'chat';
  const object = chat ? 'chat.completion' : 'text_completion';
  const chunkObject = chat ? 'chat.completion.chunk' : 'text_completion';
  const m = ctx.metrics;
  const choices: ChoiceState[] = Array.from({ length: req.n }, () => ({ text: '', tokens: [] }));
  const echoText = !chat && (req as CompletionRequest).echo ? ctx.tokenizer.decode(prompt.ids, { skipSpecialTokens: false }) : '';
  let firstTokenAt = 0, lastTokenAt = 0;
  let queued = true;
  ctx.queuedTokens(prompt.ids.length * req.n);
  const leaveQueue = (): void => {
    if (!queued) return;
    queued = false;
    ctx.queuedTokens(-prompt.ids.length * req.n);
    m.queueTime.observe((performance.now() - arrival) / 1000);
  };
  m.promptTokens.inc(undefined, prompt.ids.length);

  const stream = req.stream ? new SseWriter(res, ctx.sse) : undefined;
  // SSE writes are async (backpressure); engine callbacks are not: chain the writes, in order.
  let chain: Promise<void> = Promise.resolve();
  let streamFailed = false;
  const write = (obj: unknown): void => {
    if (!stream) return;
    chain = chain.then(() => (streamFailed ? undefined : stream.send(obj))).catch((e) => {
      if (!streamFailed) {
        streamFailed = true;
        abort();
        settle.reject(e);
      }
    });
  };
  const usage = (): { prompt_tokens: number; completion_tokens: number; total_tokens: number } => {
    const completion = choices.reduce((a, c) => a + (c.end?.completionTokens ?? 0), 0);
    return { prompt_tokens: prompt.ids.length, completion_tokens: completion, total_tokens: prompt.ids.length + completion };
  };
  const chunk = (choiceList: unknown[]): Record<string, unknown> => ({
    id,
    object: chunkObject,
    created,
    model: ctx.modelName,
    choices: choiceList,
    ...(req.includeUsage ? { usage: null } : {}),
  });

  const settle = deferred<void>();
  let ended = 0;
  let abort: () => void = () => {};

  const onDelta = (index: number, text: string, tokens: readonly TokenInfo[]): void => {
    const c = choices[index];
    const now = performance.now();
    if (!firstTokenAt) {
      firstTokenAt = now;
      m.timeToFirstToken.observe((now - arrival) / 1000);
    } else if (tokens.length > 0 || text) m.interTokenLatency.observe((now - lastTokenAt) / 1000);
    lastTokenAt = now;
    c.text += text;
    c.tokens.push(...tokens);
    if (!stream || (!text && !(req.logprobs && tokens.length > 0))) return;
    write(chunk([streamChoice(ctx, req, index, text, tokens, null)]));
  };

  abort = startRun(
    ctx.engine,
    ctx.tokenizer,
    {
      prompt: prompt.ids,
      n: req.n,
      stop: req.stop,
      parseTools: chat && (req as ChatRequest).tools !== undefined,
      request: {
        maxTokens: prompt.maxTokens,
        minTokens: req.minTokens,
        stopTokenIds: [...(req.ignoreEos ? [] : ctx.eosTokenIds), ...req.stopTokenIds],
        sampling: { temperature: req.temperature ?? 1, topK: req.topK, topP: req.topP, seed: req.seed },
        processing: {
          logitBias: req.logitBias,
          presencePenalty: req.presencePenalty,
          frequencyPenalty: req.frequencyPenalty,
          repetitionPenalty: req.repetitionPenalty,
          minP: req.minP,
        },
        logprobs: req.logprobs ? req.topLogprobs : undefined,
      },
    },
    {
      onScheduled: leaveQueue,
      onDelta: (d: ChoiceDelta) => onDelta(d.index, d.text, d.tokens),
      onEnd: (e: ChoiceEnd) => {
        leaveQueue();
        const c = choices[e.index];
        c.text += e.text;
        c.tokens.push(...e.tokens);
        c.end = e;
        m.generationTokens.inc(undefined, e.completionTokens);
        if (stream) {
          if (e.text || (req.logprobs && e.tokens.length > 0)) write(chunk([streamChoice(ctx, req, e.index, e.text, e.tokens, null)]));
          write(chunk([streamChoice(ctx, req, e.index, '', [], e)]));
        }
        if (++ended === req.n) chain.then(() => settle.resolve(), settle.reject);
      },
      onError: (err) => {
        leaveQueue();
        settle.reject(err);
      },
    },
  );

  // A client that goes away aborts the sequences and frees their caches within one step (L1).
  const onClose = (): void => {
    if (res.writableFinished) return;
    if (ended < req.n || stream) {
      abort();
      settle.reject(new StreamClosedError('closed'));
    }
  };
  res.once('close', onClose);
  void ctx.shutdown.then(() => settle.reject(new HttpError(503, 'the server is shutting down', { retryAfter: 5 })));

  if (stream) {
    stream.start();
    stream.startPings();
    if (echoText) write(chunk([{ index: 0, text: echoText, logprobs: null, finish_reason: null }]));
    if (chat) for (let i = 0; i < req.n; i++) write(chunk([{ index: i, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]));
  }

  try {
    await settle.promise;
    if (stream) {
      if (req.includeUsage) write({ id, object: chunkObject, created, model: ctx.modelName, choices: [], usage: usage() });
      await chain;
      if (streamFailed) throw new StreamClosedError('closed');
      stream.stopPings();
      await stream.done();
    } else {
      const body = {
        id,
        object,
        created,
        model: ctx.modelName,
        choices: choices.map((c, index) => finalChoice(ctx, req, index, c, echoText)),
        usage: usage(),
      };
      sendJson(res, 200, body);
    }
    for (const c of choices) m.requestSuccess.inc({ finish_reason: c.end!.finishReason });
    m.e2eRequestLatency.observe((performance.now() - arrival) / 1000);
  } catch (err) {
    abort();
    leaveQueue();
    if (err instanceof StreamClosedError) {
      ctx.onDisconnect();
      stream?.stopPings();
      if (!res.destroyed) res.destroy();
      return;
    }
    const he = err instanceof CapacityError ? new HttpError(400, err.message, { param: 'max_tokens', code: 'context_length_exceeded' }) : toHttpError(err);
    m.requestErrors.inc({ type: he.type });
    if (stream) {
      stream.stopPings();
      try {
        await chain;
        if (!stream.closed) {
          await stream.error(he.status < 500 ? he : new HttpError(he.status, he.message, { type: 'server_error' }));
          await stream.done();
        }
      } catch {
        if (!res.destroyed) res.destroy();
      }
    } else if (!res.headersSent) {
      sendError(res, he);
    }
  } finally {
    res.off('close', onClose);
  }
}

function streamChoice(ctx: CompletionContext, req: Req, index: number, text: string, tokens: readonly TokenInfo[], end: ChoiceEnd | null): Record<string, unknown> {
  const lp = req.logprobs && tokens.length > 0 ? logprobsPayload(ctx, req, tokens) : null;
  if (req.kind === 'chat') {
    const delta: Record<string, unknown> = {};
    if (text) delta.content = text;
    if (end && end.toolCalls.length > 0) {
      delta.tool_calls = end.toolCalls.map((t, i) => ({ index: i, id: t.id, type: 'function', function: t.function }));
    }
    return { index, delta, logprobs: lp, finish_reason: end ? end.finishReason : null };
  }
  return { index, text, logprobs: lp, finish_reason: end ? end.finishReason : null };
}

function finalChoice(ctx: CompletionContext, req: Req, index: number, c: ChoiceState, echoText: string): Record<string, unknown> {
  const end = c.end!;
  const lp = req.logprobs ? logprobsPayload(ctx, req, c.tokens) : null;
  if (req.kind === 'chat') {
    const message: Record<string, unknown> = { role: 'assistant', content: end.toolCalls.length > 0 && c.text.trim() === '' ? null : c.text };
    if (end.toolCalls.length > 0) message.tool_calls = end.toolCalls;
    return { index, message, logprobs: lp, finish_reason: end.finishReason };
  }
  return { index, text: echoText + c.text, logprobs: lp, finish_reason: end.finishReason };
}

/** Chat: `{content: [{token, logprob, bytes, top_logprobs}]}`; completions: the legacy parallel arrays. */
function logprobsPayload(ctx: CompletionContext, req: Req, tokens: readonly TokenInfo[]): Record<string, unknown> {
  const str = (id: number): string => ctx.tokenizer.decode([id], { skipSpecialTokens: false });
  if (req.kind === 'chat') {
    return {
      content: tokens.map((t) => {
        const s = str(t.id);
        return {
          token: s,
          logprob: t.logprob,
          bytes: [...Buffer.from(s, 'utf8')],
          top_logprobs: t.top.map((x) => {
            const ts = str(x.id);
            return { token: ts, logprob: x.logprob, bytes: [...Buffer.from(ts, 'utf8')] };
          }),
        };
      }),
    };
  }
  return {
    tokens: tokens.map((t) => str(t.id)),
    token_logprobs: tokens.map((t) => t.logprob),
    top_logprobs: tokens.map((t) => Object.fromEntries(t.top.map((x) => [str(x.id), x.logprob]))),
    text_offset: offsets(tokens.map((t) => str(t.id))),
  };
}

function offsets(pieces: readonly string[]): number[] {
  let at = 0;
  return pieces.map((p) => {
    const o = at;
    at += p.length;
    return o;
  });
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data), ...headers });
  res.end(data);
}

export function sendError(res: ServerResponse, e: HttpError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, e.status, errorBody(e), e.headers);
}

function deferred<T>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void, reject!: (e: unknown) => void;
  let done = false;
  const promise = new Promise<T>((res, rej) => {
    resolve = (v) => {
      if (!done) (done = true), res(v);
    };
    reject = (e) => {
      if (!done) (done = true), rej(e);
    };
  });
  promise.catch(() => {});
  return { promise, resolve, reject };
}
