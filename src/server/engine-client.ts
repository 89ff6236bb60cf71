/**
 * The HTTP thread's handle on the engine worker: starts it, waits for the model, submits sequences and routes
 * their tokens back to per-sequence listeners, mirrors the scheduler's stats, and shuts it down.
 */

import { Worker } from 'node:worker_threads';
import type { LoadProgressEvent } from '../engine/model.js';
import type { EngineRequest, SchedulerStats, SequenceListener } from '../engine/scheduler.js';
import { CapacityError, LightningMoeError } from '../util/errors.js';
import type { EngineWorkerConfig, FromEngine, ToEngine } from './engine-protocol.js';

export interface EngineInfo {
  readonly device: string;
  /** Most prompt + generated tokens one sequence may hold (context, bounded by the KV cache). */
  readonly maxSequenceTokens: number;
  readonly maxSequences: number;
  readonly kvTokens: number;
}

/** What the HTTP layer needs from an engine (EngineClient; tests substitute scripted engines). */
export interface Engine {
  readonly info: EngineInfo;
  readonly stats: SchedulerStats;
  readonly msSinceProgress: number;
  readonly alive: boolean;
  submit(request: EngineRequest, listener: SequenceListener): { abort(): void };
  shutdown(timeoutMs?: number): Promise<void>;
}

/** An engine-side failure of one sequence, with the worker's error code. */
export class EngineError extends LightningMoeError {}

export class EngineClient implements Engine {
  private readonly listeners = new Map<number, SequenceListener>();
  private nextId = 1;
  private latest: SchedulerStats = { running: 0, waiting: 0, preemptions: 0, steps: 0, slotsUsed: 0, kvUsage: 0 };
  private lastProgressAt = Date.now();
  private closed: Promise<void>;
  private exited = false;

  private constructor(
    private readonly worker: Worker,
    readonly info: EngineInfo,
    onFatal: (message: string) => void,
  ) {
    worker.on('message', (m: FromEngine) => this.onMessage(m, onFatal));
    this.closed = new Promise((resolve) => worker.once('exit', () => resolve()));
    worker.once('exit', () => {
      this.exited = true;
      // Anything still in flight can no longer finish.
      for (const l of this.listeners.values()) l.onError(new EngineError('INTERNAL', 'the engine stopped'));
      this.listeners.clear();
    });
  }

  /** Starts the worker and resolves once the model is loaded (rejects with the load error). */
  static start(config: EngineWorkerConfig, options: { onProgress?: (e: LoadProgressEvent) => void; onFatal?: (message: string) => void } = {}): Promise<EngineClient> {
    const worker = new Worker(new URL('./engine-worker.js', import.meta.url), { workerData: config });
    return new Promise((resolve, reject) => {
      const early = (m: FromEngine): void => {
        if (m.type === 'progress') options.onProgress?.(m.event);
        else if (m.type === 'fatal') reject(new EngineError('INTERNAL', m.message));
        else if (m.type === 'ready') {
          worker.off('message', early);
          resolve(new EngineClient(worker, { device: m.device, maxSequenceTokens: m.maxSequenceTokens, maxSequences: m.maxSequences, kvTokens: m.kvTokens }, options.onFatal ?? (() => {})));
        }
      };
      worker.on('message', early);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new EngineError('INTERNAL', `the engine worker exited with code ${code} while loading`)));
    });
  }

  get stats(): SchedulerStats {
    return this.latest;
  }

  /** Milliseconds since the engine last reported a step (or was idle). */
  get msSinceProgress(): number {
    return Date.now() - this.lastProgressAt;
  }

  get alive(): boolean {
    return !this.exited;
  }

  /** Queues a sequence; returns its abort function. Listener callbacks arrive as the worker reports. */
  submit(request: EngineRequest, listener: SequenceListener): { abort(): void } {
    const id = this.nextId++;
    if (this.exited) {
      queueMicrotask(() => listener.onError(new EngineError('INTERNAL', 'the engine is not running')));
      return { abort() {} };
    }
    this.listeners.set(id, listener);
    this.post({ type: 'submit', id, request });
    return {
      abort: () => {
        if (this.listeners.delete(id)) this.post({ type: 'abort', id });
      },
    };
  }

  /** Aborts every sequence, stops the loop, frees the model and waits for the worker to exit. */
  async shutdown(timeoutMs = 10_000): Promise<void> {
    if (this.exited) return;
    this.post({ type: 'shutdown' });
    const timer = setTimeout(() => void this.worker.terminate(), timeoutMs);
    await this.closed;
    clearTimeout(timer);
  }

  private post(m: ToEngine): void {
    this.worker.postMessage(m);
  }

  private onMessage(m: FromEngine, onFatal: (message: string) => void): void {
    switch (m.type) {
      case 'stats':
        if (m.stats.steps !== this.latest.steps || (m.stats.running === 0 && m.stats.waiting === 0)) this.lastProgressAt = Date.now();
        this.latest = m.stats;
        return;
      case 'scheduled':
        this.listeners.get(m.id)?.onScheduled?.();
        return;
      case 'tokens': {
        const l = this.listeners.get(m.id);
        if (l) for (const t of m.tokens) if (this.listeners.has(m.id)) l.onToken(t);
        return;
      }
      case 'finish': {
        const l = this.listeners.get(m.id);
        this.listeners.delete(m.id);
        l?.onFinish(m.reason, { promptTokens: m.promptTokens, completionTokens: m.completionTokens });
        return;
      }
      case 'error': {
        const l = this.listeners.get(m.id);
        this.listeners.delete(m.id);
        l?.onError(m.capacity ? new CapacityError(m.message) : new EngineError('INTERNAL', m.message));
        return;
      }
      case 'fatal':
        onFatal(m.message);
        return;
      default:
        return;
    }
  }
}
