/**
 * HTTP errors in the OpenAI shape (SERVING.md §2, E1–E3).
 *
 * Every error response body is `{"error": {"message", "type", "param", "code"}}` with all four keys present (E1).
 * Messages are one line and bounded (E2). Client mistakes are 4xx and server faults 5xx (E3): the official SDKs
 * retry 408/409/429/5xx, so a 500 for bad input would triple the load.
 *
 * Messages written by the server itself are trusted to be clean (they may echo a bounded piece of the caller's
 * input, which is not a leak). Messages that come from elsewhere (library errors, tokenizer/template errors) go
 * through `sanitizeMessage`, and anything unexpected becomes a generic 500 that says nothing about the internals.
 */

import {
  AbortError,
  InvalidArgumentError,
  TokenizerError,
  UnsupportedError,
} from '../util/errors.js';

export type OpenAIErrorType = 'invalid_request_error' | 'authentication_error' | 'rate_limit_error' | 'server_error';

export interface HttpErrorOptions {
  /** Defaults from the status: 401 → authentication_error, 429 → rate_limit_error, ≥ 500 → server_error, else invalid_request_error. */
  type?: OpenAIErrorType;
  param?: string | null;
  code?: string | null;
  /** Seconds; sent as `Retry-After` (429, 503). */
  retryAfter?: number;
  /** Extra response headers (e.g. `WWW-Authenticate`). */
  headers?: Record<string, string>;
}

/** Longest error message sent (E2). */
export const MAX_ERROR_MESSAGE_CHARS = 1000;
/** Longest piece of a caller's value echoed inside a message (E2). */
export const MAX_ECHO_CHARS = 200;

function defaultType(status: number): OpenAIErrorType {
  if (status === 401) return 'authentication_error';
  if (status === 429) return 'rate_limit_error';
  if (status >= 500) return 'server_error';
  return 'invalid_request_error';
}

/** One line, at most `max` characters (an ellipsis marks a cut). */
function bound(s: string, max = MAX_ERROR_MESSAGE_CHARS): string {
  const line = s.replace(/[\r\n\u2028\u2029]+/g, ' ');
  return line.length <= max ? line : `${line.slice(0, max - 1)}…`;
}

export class HttpError extends Error {
  readonly type: OpenAIErrorType;
  readonly param: string | null;
  readonly code: string | null;
  readonly retryAfter: number | undefined;
  /** Headers to send with the error response, `Retry-After` included when `retryAfter` is set. */
  readonly headers: Record<string, string>;

  constructor(
    readonly status: number,
    message: string,
    opts: HttpErrorOptions = {},
  ) {
    super(bound(message));
    this.name = 'HttpError';
    this.type = opts.type ?? defaultType(status);
    this.param = opts.param ?? null;
    this.code = opts.code ?? null;
    this.retryAfter = opts.retryAfter;
    this.headers = { ...opts.headers };
    if (opts.retryAfter !== undefined) this.headers['Retry-After'] = String(Math.max(0, Math.ceil(opts.retryAfter)));
  }
}

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** The E1 body. All four keys are always present. */
export function errorBody(e: HttpError): ErrorBody {
  return { error: { message: bound(e.message), type: e.type, param: e.param, code: e.code } };
}

// Absolute paths with at least two segments (`/a/b`), `file://` URLs, Windows drive paths, optionally followed by
// `:line:col` as in stack frames. A lone `/x` is left alone: it is more often a route or a fraction than a file.
const PATH_RE = /(?:file:\/\/)?(?<![\w.~-])(?:~|[A-Za-z]:)?[/\\](?:[^\s/\\'"`()<>,;]+[/\\])+[^\s/\\'"`()<>,;:]*(?::\d+){0,2}/g;
const ADDR_RE = /\b0x[0-9a-fA-F]{6,}\b/g;

/**
 * For messages that did not come from the server itself (E2): no file paths, no memory addresses, one line,
 * at most 1000 characters. Stack frames are dropped by keeping only the first line before anything else.
 */
export function sanitizeMessage(s: string): string {
  const firstLine = String(s).split(/\n\s*at\s/)[0]; // drop a stack trace appended to a message
  return bound(firstLine.replace(PATH_RE, '<path>').replace(ADDR_RE, '<addr>').replace(/\s+/g, ' ').trim());
}

/**
 * Maps anything thrown while handling a request to an HttpError:
 *  - HttpError → itself;
 *  - InvalidArgumentError → 400 with its `param`; UnsupportedError and TokenizerError (e.g. a template render
 *    error, T2) → 400 — all caused by the request; their messages are sanitised;
 *  - AbortError → 503 'request aborted' (the server gave up on the request: shutdown, stall);
 *  - anything else (InternalError, CUDA, plain Error, non-Error) → 500 with a generic message, never the original.
 */
export function toHttpError(err: unknown): HttpError {
  if (err instanceof HttpError) return err;
  if (err instanceof InvalidArgumentError) {
    return new HttpError(400, sanitizeMessage(err.message), { param: err.param ?? null });
  }
  if (err instanceof UnsupportedError || err instanceof TokenizerError) {
    return new HttpError(400, sanitizeMessage(err.message));
  }
  if (err instanceof AbortError) return new HttpError(503, 'request aborted');
  return internalError(); // every other library error (Internal, CUDA, OOM, ...) is a server fault
}

// --- convenience constructors ---------------------------------------------------------------------------------

export function badRequest(message: string, param: string | null = null, code: string | null = null): HttpError {
  return new HttpError(400, message, { param, code });
}

/** Unknown model (V2). */
export function modelNotFound(model: string): HttpError {
  return new HttpError(404, `The model ${echo(model)} does not exist.`, { param: 'model', code: 'model_not_found' });
}

export function notFound(message = 'not found', code: string | null = null): HttpError {
  return new HttpError(404, message, { code });
}

/** 401 for a missing or wrong API key (A1). */
export function unauthorized(message = 'missing or invalid API key'): HttpError {
  return new HttpError(401, message, { code: 'invalid_api_key', headers: { 'WWW-Authenticate': 'Bearer' } });
}

/** 413: body over the size limit (V5). */
export function payloadTooLarge(limitBytes: number): HttpError {
  return new HttpError(413, `request body is larger than the limit of ${limitBytes} bytes`);
}

/** 415: not `application/json`. */
export function unsupportedMediaType(contentType: string | undefined): HttpError {
  const got = contentType === undefined ? 'none' : echo(contentType);
  return new HttpError(415, `Content-Type must be application/json, got ${got}`);
}

/** 429: the waiting queue is full (C1). */
export function rateLimited(retryAfter: number, message = 'the server is at capacity; retry later'): HttpError {
  return new HttpError(429, message, { code: 'rate_limit_exceeded', retryAfter });
}

/** 503: loading, draining or stalled (L2, O1). */
export function unavailable(message: string, retryAfter?: number): HttpError {
  return new HttpError(503, message, retryAfter === undefined ? {} : { retryAfter });
}

export function internalError(): HttpError {
  return new HttpError(500, 'internal server error');
}

/** A caller's value for a message: JSON text, cut to 200 characters (E2). */
export function echo(v: unknown): string {
  let s: string;
  try {
    s = typeof v === 'string' ? JSON.stringify(v) : (JSON.stringify(v) ?? String(v));
  } catch {
    s = Object.prototype.toString.call(v);
  }
  return s.length <= MAX_ECHO_CHARS ? s : `${s.slice(0, MAX_ECHO_CHARS - 1)}…`;
}
