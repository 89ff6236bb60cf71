/**
 * Server-sent events for streamed completions (SERVING.md §5).
 *
 * - headers: `Content-Type: text/event-stream`, `Cache-Control: no-cache`, `X-Accel-Buffering: no` (so a proxy
 *   such as nginx does not buffer the stream), `Connection: keep-alive`; they are flushed at once so a client sees
 *   the response start during a long prefill;
 * - one JSON object per `data:` line and a blank line after each event; `data: [DONE]` ends the stream (S7);
 * - a mid-stream failure is one `data: {"error": {...}}` event in the E1 shape (S7);
 * - S8: `: ping` comments keep idle connections (proxies, load balancers) open, sent only when nothing else was
 *   written for `pingIntervalMs`;
 * - S9: when `write()` returns false, `send` waits for 'drain'; a client that reads nothing for `stallTimeoutMs`
 *   gets its connection destroyed and `send` rejects, so the caller aborts the generation instead of buffering
 *   tokens without bound. `send` also rejects once the response has closed.
 */

import type { OutgoingHttpHeaders } from 'node:http';
import { errorBody, type HttpError } from './errors.js';

/** The parts of `http.ServerResponse` the writer uses (a fake with these members is enough for tests). */
export interface SseResponse {
  writeHead(statusCode: number, headers?: OutgoingHttpHeaders): unknown;
  flushHeaders?(): void;
  write(chunk: string): boolean;
  end(): unknown;
  destroy(error?: Error): unknown;
  once(event: 'drain' | 'close', listener: () => void): unknown;
  off(event: 'drain' | 'close', listener: () => void): unknown;
  readonly writableEnded: boolean;
  readonly destroyed: boolean;
  readonly writableNeedDrain?: boolean;
}

export interface SseOptions {
  /** How long `send` waits for 'drain' before giving up on the client (S9). */
  stallTimeoutMs: number;
  /** Idle time after which a `: ping` comment is written (S8). */
  pingIntervalMs: number;
}

/** Why a send failed: the client went away ('closed') or stopped reading ('stalled'). */
export class StreamClosedError extends Error {
  constructor(readonly reason: 'closed' | 'stalled') {
    super(reason === 'closed' ? 'the client closed the stream' : 'the client stopped reading the stream');
    this.name = 'StreamClosedError';
  }
}

export class SseWriter {
  readonly #res: SseResponse;
  readonly #opts: SseOptions;
  #closed = false;
  #lastWrite = performance.now();
  #pings: NodeJS.Timeout | undefined;
  /** Resolves on 'drain'; shared by concurrent sends. */
  #drain: Promise<void> | undefined;

  constructor(res: SseResponse, opts: SseOptions) {
    this.#res = res;
    this.#opts = opts;
    res.once('close', () => {
      this.#closed = true;
      this.stopPings();
    });
  }

  /** True once the response has closed, ended or been destroyed. */
  get closed(): boolean {
    return this.#closed || this.#res.destroyed || this.#res.writableEnded;
  }

  start(extraHeaders: Record<string, string> = {}): void {
    this.#res.writeHead(200, {
      ...extraHeaders,
      'Content-Type': 'text/event-stream',
      'Cache-Control': 'no-cache',
      'X-Accel-Buffering': 'no',
      Connection: 'keep-alive',
    });
    this.#res.flushHeaders?.();
    this.#lastWrite = performance.now();
  }

  /** Writes one `data:` event; resolves once the client can take more (S9). */
  async send(obj: unknown): Promise<void> {
    await this.#write(`data: ${JSON.stringify(obj)}\n\n`);
  }

  /** The mid-stream error event (S7); follow it with `done()`. */
  async error(e: HttpError): Promise<void> {
    await this.send(errorBody(e));
  }

  /** `data: [DONE]`, then ends the response. Does nothing when the stream is already closed. */
  async done(): Promise<void> {
    this.stopPings();
    if (this.closed) return;
    this.#res.write('data: [DONE]\n\n');
    this.#res.end();
  }

  /** A keep-alive comment (S8); skipped while the client is not reading (it would only grow the buffer). */
  ping(): void {
    if (this.closed || this.#res.writableNeedDrain === true) return;
    this.#res.write(': ping\n\n');
    this.#lastWrite = performance.now();
  }

  /** Pings whenever nothing was written for `pingIntervalMs`; the timer never keeps the process alive. */
  startPings(): void {
    if (this.#pings !== undefined || this.closed) return;
    const interval = this.#opts.pingIntervalMs;
    // Checking at half the interval keeps the longest silence under 1.5 × pingIntervalMs.
    this.#pings = setInterval(() => {
      if (performance.now() - this.#lastWrite >= interval) this.ping();
    }, Math.max(1, Math.floor(interval / 2)));
    this.#pings.unref();
  }

  stopPings(): void {
    if (this.#pings !== undefined) clearInterval(this.#pings);
    this.#pings = undefined;
  }

  async #write(text: string): Promise<void> {
    if (this.closed) throw new StreamClosedError('closed');
    const ok = this.#res.write(text);
    this.#lastWrite = performance.now();
    if (ok) return;
    this.#drain ??= this.#waitDrain().finally(() => {
      this.#drain = undefined;
    });
    await this.#drain;
  }

  #waitDrain(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        this.#res.off('drain', onDrain);
        this.#res.off('close', onClose);
      };
      const onDrain = (): void => {
        cleanup();
        resolve();
      };
      const onClose = (): void => {
        cleanup();
        reject(new StreamClosedError('closed'));
      };
      const timer = setTimeout(() => {
        cleanup();
        this.#closed = true;
        this.stopPings();
        // Free the socket and its buffered data: the client is not reading.
        this.#res.destroy();
        reject(new StreamClosedError('stalled'));
      }, this.#opts.stallTimeoutMs);
      this.#res.once('drain', onDrain);
      this.#res.once('close', onClose);
    });
  }
}
