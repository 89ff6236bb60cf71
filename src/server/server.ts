/**
 * The OpenAI-compatible HTTP server (SERVING.md): routing, API keys, body limits, admission control, health,
 * metrics, request ids, CORS, and the lifecycle — listen at once (503 while loading), load the model in the engine
 * worker, serve, then on drain() refuse new work, let running requests finish within a timeout, abort the rest and
 * stop the engine.
 *
 * Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models (behind the API key), GET /health
 * (public), GET /metrics (public unless `metricsAuth`), OPTIONS (never guarded). Everything else is 404.
 */

import { randomUUID } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { Device } from '../backends.js';
import { loadModelInfo, type LoadProgressEvent } from '../engine/model.js';
import { kvBlocksFor } from '../model/cache.js';
import { ConfigError, TokenizerError } from '../util/errors.js';
import { ApiKeys } from './auth.js';
import { EngineClient, type Engine } from './engine-client.js';
import type { EngineWorkerConfig } from './engine-protocol.js';
import { HttpError, modelNotFound, notFound, payloadTooLarge, rateLimited, toHttpError, unauthorized, unavailable } from './errors.js';
import { createServerMetrics, Metrics, METRICS_CONTENT_TYPE, type ServerMetrics } from './metrics.js';
import { preparePrompt, runCompletion, sendError, sendJson, type CompletionContext } from './openai.js';
import { DEFAULT_LIMITS, parseChatRequest, parseCompletionRequest, parseJsonBody, type ServerLimits } from './protocol.js';

export interface ServerOptions {
  /** The checkpoint directory. */
  readonly model: string;
  /** The model id clients use; default: the directory's name. Aliases are accepted too. */
  readonly servedModelName?: string;
  readonly aliases?: readonly string[];
  /** Default 127.0.0.1 (A2): listening elsewhere is an explicit choice. */
  readonly host?: string;
  /** Default 8000; 0 picks a free port. */
  readonly port?: number;
  /** Accepted bearer tokens; none = no authentication. */
  readonly apiKeys?: readonly string[];
  readonly device?: Device;
  /** Sequences in the running batch (lightning state slots). Default 32. */
  readonly maxNumSeqs?: number;
  /** KV cache capacity in tokens, allocated at start-up. Default: maxModelLen × 2, at most 2^20. */
  readonly kvCacheTokens?: number;
  /** Context length served; default (and upper bound) the model's max_position_embeddings. */
  readonly maxModelLen?: number;
  /** Token budget of one engine step (chunked prefill). Default 512. */
  readonly maxBatchTokens?: number;
  /** Sequences allowed to wait for a slot (n counts n times). Default 256. */
  readonly maxWaiting?: number;
  /** Prompt tokens allowed to wait (C1). Default 1,048,576. */
  readonly maxQueuedTokens?: number;
  /** Request body limit in bytes. Default 4 MiB. */
  readonly maxBodyBytes?: number;
  readonly limits?: Partial<ServerLimits>;
  /** Guard /metrics with the API key too. Default false. */
  readonly metricsAuth?: boolean;
  /** Origins allowed by CORS; none = CORS off (A3). */
  readonly corsOrigins?: readonly string[];
  /** A stream whose client has not read for this long is dropped (S9). Default 30 s. */
  readonly streamStallMs?: number;
  /** Idle time before an SSE keep-alive comment (S8). Default 15 s. */
  readonly pingIntervalMs?: number;
  /** /health reports 503 when work is queued and the engine made no step for this long (O1). Default 120 s. */
  readonly watchdogMs?: number;
  /** Request log lines (no prompt or completion text, A4); default none. */
  readonly log?: (line: string) => void;
  readonly onProgress?: (e: LoadProgressEvent) => void;
  /** @internal Replaces the engine worker (tests drive the HTTP layer with scripted engines). */
  readonly engineFactory?: (config: EngineWorkerConfig) => Promise<Engine>;
}

export type ServerState = 'loading' | 'ready' | 'draining' | 'stopped' | 'failed';

export interface RunningServer {
  /** http://host:port */
  readonly url: string;
  readonly port: number;
  readonly modelName: string;
  get state(): ServerState;
  /** Resolves once the model is loaded (rejects if loading failed). */
  readonly ready: Promise<void>;
  /**
   * Stops admission (new requests and /health → 503), waits up to `timeoutMs` for in-flight requests, aborts the
   * rest (streams get an error event and [DONE]), stops the engine and closes the listener.
   */
  drain(timeoutMs: number): Promise<void>;
}

/** Starts listening now; the model loads in the background (see `ready`). */
export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const info = await loadModelInfo(options.model);
  if (!info.tokenizer) throw new TokenizerError(`${options.model}: the server needs tokenizer.json (and a chat template for chat)`, { file: options.model });
  const modelName = options.servedModelName ?? path.basename(info.dir);
  const names = new Set([modelName, ...(options.aliases ?? [])]);
  const maxModelLen = options.maxModelLen ?? info.config.maxPositionEmbeddings;
  if (!(Number.isSafeInteger(maxModelLen) && maxModelLen >= 2 && maxModelLen <= info.config.maxPositionEmbeddings)) {
    throw new ConfigError(`--max-model-len must be an integer in [2, ${info.config.maxPositionEmbeddings}] (the model's max_position_embeddings), got ${maxModelLen}`);
  }
  const kvTokens = options.kvCacheTokens ?? Math.min(2 * maxModelLen, 1 << 20);
  const kvBlocks = kvBlocksFor(kvTokens);
  // V5: a prompt longer than the context allows at a generous 32 characters per token is refused before tokenizing.
  const limits: ServerLimits = { ...DEFAULT_LIMITS, maxPromptChars: Math.min(DEFAULT_LIMITS.maxPromptChars, maxModelLen * 32), ...options.limits };
  const maxNumSeqs = options.maxNumSeqs ?? 32;
  const maxWaiting = options.maxWaiting ?? 256;
  const maxQueuedTokens = options.maxQueuedTokens ?? 1 << 20;
  const maxBodyBytes = options.maxBodyBytes ?? 4 << 20;
  const watchdogMs = options.watchdogMs ?? 120_000;
  const keys = new ApiKeys(options.apiKeys ?? []);
  const log = options.log;

  let state: ServerState = 'loading';
  let engine: Engine | undefined;
  /** Sequences admitted and not finished (running + waiting in the engine), reserved before any parsing work. */
  let inFlight = 0;
  let queuedTokens = 0;
  const active = new Set<Promise<void>>();
  let shutdownNow!: () => void;
  const shutdown = new Promise<void>((r) => (shutdownNow = r));

  const registry = new Metrics('lmoe');
  const metrics: ServerMetrics = createServerMetrics(registry, {
    running: () => engine?.stats.running ?? 0,
    waiting: () => engine?.stats.waiting ?? 0,
    kvUsage: () => engine?.stats.kvUsage ?? 0,
    slotsUsed: () => engine?.stats.slotsUsed ?? 0,
    preemptions: () => engine?.stats.preemptions ?? 0,
  });

  const healthy = (): boolean => {
    if (state !== 'ready' || !engine?.alive) return false;
    const s = engine.stats;
    return !((s.running > 0 || s.waiting > 0) && engine.msSinceProgress > watchdogMs);
  };

  const server = http.createServer((req, res) => {
    const started = performance.now();
    const requestId = requestIdOf(req);
    res.setHeader('X-Request-Id', requestId);
    cors(req, res, options.corsOrigins);
    const p = handle(req, res)
      .catch((err) => {
        const he = toHttpError(err);
        if (he.status >= 500) log?.(`${requestId} internal error: ${err instanceof Error ? err.message : String(err)}`);
        metrics.requestErrors.inc({ type: he.type });
        sendError(res, he);
      })
      .finally(() => {
        active.delete(p);
        log?.(`${requestId} ${req.method} ${urlPath(req)} ${res.statusCode} ${((performance.now() - started) / 1000).toFixed(3)}s`);
      });
    active.add(p);
  });
  // Slowloris guards, and room for minute-long generations (C4): the request must arrive quickly; the response
  // may take as long as it takes.
  server.headersTimeout = 30_000;
  server.requestTimeout = 120_000;
  server.keepAliveTimeout = 5_000;

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const route = urlPath(req);
    const method = req.method ?? 'GET';
    if (method === 'OPTIONS') {
      res.writeHead(204).end();
      return;
    }
    if (route === '/health') {
      if (method !== 'GET' && method !== 'HEAD') throw new HttpError(405, 'use GET /health');
      const ok = healthy();
      res.writeHead(ok ? 200 : 503, ok ? {} : { 'Retry-After': '5' }).end();
      return;
    }
    if (route === '/metrics' && method === 'GET') {
      if (options.metricsAuth && !keys.check(req.headers.authorization)) throw unauthorized();
      const body = registry.render();
      res.writeHead(200, { 'Content-Type': METRICS_CONTENT_TYPE, 'Content-Length': Buffer.byteLength(body) }).end(body);
      return;
    }
    const known = route === '/v1/models' || route === '/v1/chat/completions' || route === '/v1/completions';
    if (!known) throw notFound(`no route for ${method} ${route.slice(0, 200)}`);
    if (!keys.check(req.headers.authorization)) throw unauthorized();
    if (route === '/v1/models') {
      if (method !== 'GET') throw new HttpError(405, 'use GET /v1/models');
      const created = Math.floor(Date.now() / 1000);
      sendJson(res, 200, { object: 'list', data: [...names].map((id) => ({ id, object: 'model', created, owned_by: 'lightning-moe' })) });
      return;
    }
    if (method !== 'POST') throw new HttpError(405, `use POST ${route}`);
    if (state === 'loading') throw unavailable('the model is loading', 5);
    if (state !== 'ready' || !engine) {
      metrics.admissionRejections.inc({ reason: 'draining' });
      throw unavailable('the server is shutting down', 5);
    }
    const raw = await readBody(req, maxBodyBytes);
    const body = parseJsonBody(raw, req.headers['content-type']);
    const ctxParse = { limits, vocabSize: info.config.vocabSize };
    const parsed = route === '/v1/chat/completions' ? parseChatRequest(body, ctxParse) : parseCompletionRequest(body, ctxParse);
    if (!names.has(parsed.model)) throw modelNotFound(parsed.model);
    if (parsed.kind === 'completion' && parsed.echo && parsed.logprobs) {
      throw new HttpError(400, 'logprobs of the echoed prompt are not supported; use echo or logprobs, not both', { param: 'logprobs' });
    }
    if (parsed.kind === 'chat' && (parsed.toolChoice === 'required' || typeof parsed.toolChoice === 'object')) {
      throw new HttpError(400, 'tool_choice "required" or a named function is not supported (the model cannot be forced to call a tool); use "auto" or "none"', { param: 'tool_choice' });
    }
    // Admission (C1): reserve the slots before any expensive work, atomically (no await in between).
    const n = parsed.n;
    if (inFlight + n > maxNumSeqs + maxWaiting) {
      metrics.admissionRejections.inc({ reason: 'queue_full' });
      throw rateLimited(1, `the server is at capacity (${inFlight} sequences in flight); retry later`);
    }
    inFlight += n;
    try {
      const prompt = preparePrompt(ctx, parsed);
      if (queuedTokens + prompt.ids.length * n > maxQueuedTokens && queuedTokens > 0) {
        metrics.admissionRejections.inc({ reason: 'queue_tokens' });
        throw rateLimited(1, `too many prompt tokens are queued (${queuedTokens}); retry later`);
      }
      await runCompletion(ctx, parsed, res, prompt, performance.now());
    } finally {
      inFlight -= n;
    }
  }

  const ctx: CompletionContext = {
    get engine() {
      return engine!;
    },
    tokenizer: info.tokenizer,
    eosTokenIds: info.eosTokenIds,
    modelName,
    maxModelLen,
    limits,
    metrics,
    sse: { stallTimeoutMs: options.streamStallMs ?? 30_000, pingIntervalMs: options.pingIntervalMs ?? 15_000 },
    shutdown,
    onDisconnect: () => metrics.clientDisconnects.inc(),
    queuedTokens: (d) => (queuedTokens += d),
  };

  const host = options.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 8000, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;

  const workerConfig: EngineWorkerConfig = {
    dir: info.dir,
    device: options.device ?? 'auto',
    cache: { maxSequences: maxNumSeqs, initialKvBlocks: kvBlocks, maxKvBlocks: kvBlocks },
    maxBatchTokens: options.maxBatchTokens ?? 512,
    maxModelLen,
  };
  const ready = (
    options.engineFactory
      ? options.engineFactory(workerConfig)
      : EngineClient.start(workerConfig, { onProgress: options.onProgress, onFatal: (msg) => log?.(`engine failure: ${msg}`) })
  ).then(
    (e) => {
      engine = e;
      if (state === 'loading') state = 'ready';
    },
    (err) => {
      state = 'failed';
      throw err;
    },
  );
  ready.catch(() => {});

  let draining: Promise<void> | undefined;
  const drain = (timeoutMs: number): Promise<void> => {
    draining ??= (async () => {
      if (state === 'loading') await ready.catch(() => {});
      state = 'draining';
      const deadline = new Promise<void>((r) => setTimeout(r, Math.max(0, timeoutMs)).unref());
      await Promise.race([Promise.allSettled([...active]), deadline]);
      // Whatever is still running is cut off: streams get the error event + [DONE], others a 503.
      shutdownNow();
      await Promise.allSettled([...active]);
      await engine?.shutdown();
      state = 'stopped';
      server.closeAllConnections?.();
      await new Promise<void>((r) => server.close(() => r()));
    })();
    return draining;
  };

  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    modelName,
    get state() {
      return state;
    },
    ready,
    drain,
  };
}

function urlPath(req: IncomingMessage): string {
  const u = req.url ?? '/';
  const q = u.indexOf('?');
  return q >= 0 ? u.slice(0, q) : u;
}

const REQUEST_ID = /^[\w.:-]{1,128}$/;

/** A valid client X-Request-Id is echoed; otherwise a fresh one. */
function requestIdOf(req: IncomingMessage): string {
  const v = req.headers['x-request-id'];
  return typeof v === 'string' && REQUEST_ID.test(v) ? v : randomUUID();
}

/** CORS (A3): only for listed origins, never a reflected wildcard with credentials. */
function cors(req: IncomingMessage, res: ServerResponse, origins: readonly string[] | undefined): void {
  const origin = req.headers.origin;
  if (!origins || origins.length === 0 || typeof origin !== 'string' || !origins.includes(origin)) return;
  res.setHeader('Access-Control-Allow-Origin', origin);
  res.setHeader('Vary', 'Origin');
  res.setHeader('Access-Control-Allow-Methods', 'GET, POST, OPTIONS');
  res.setHeader('Access-Control-Allow-Headers', 'Authorization, Content-Type, X-Request-Id');
  res.setHeader('Access-Control-Expose-Headers', 'X-Request-Id');
}

/** Reads the body up to `limit` bytes; over it → 413 (the declared Content-Length is checked first). */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > limit) {
    req.resume();
    return Promise.reject(payloadTooLarge(limit));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        req.removeAllListeners('data');
        req.resume();
        reject(payloadTooLarge(limit));
        return;
      }
      chunks.push(c);
    });
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
  });
}
