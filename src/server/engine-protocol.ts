/**
 * Messages between the HTTP thread and the engine worker (engine-worker.ts). The worker owns the model, its caches
 * and the scheduler loop; the HTTP thread owns sockets, validation, tokenization and detokenization. Everything
 * crossing is plain data (structured clone).
 */

import type { LoadProgressEvent } from '../engine/model.js';
import type { CacheOptions } from '../model/minimax01.js';
import type { Device } from '../backends.js';
import type { EngineFinishReason, EngineRequest, SampledToken, SchedulerStats } from '../engine/scheduler.js';

export interface EngineWorkerConfig {
  readonly dir: string;
  readonly device: Device;
  readonly cache: CacheOptions;
  readonly maxBatchTokens: number;
  readonly maxModelLen: number;
}

/** HTTP thread → worker. */
export type ToEngine =
  | { readonly type: 'submit'; readonly id: number; readonly request: EngineRequest }
  | { readonly type: 'abort'; readonly id: number }
  | { readonly type: 'shutdown' };

/** Worker → HTTP thread. */
export type FromEngine =
  | { readonly type: 'progress'; readonly event: LoadProgressEvent }
  | { readonly type: 'ready'; readonly device: string; readonly maxSequenceTokens: number; readonly maxSequences: number; readonly kvTokens: number }
  | { readonly type: 'scheduled'; readonly id: number }
  | { readonly type: 'tokens'; readonly id: number; readonly tokens: readonly SampledToken[] }
  | { readonly type: 'finish'; readonly id: number; readonly reason: EngineFinishReason; readonly promptTokens: number; readonly completionTokens: number }
  | { readonly type: 'error'; readonly id: number; readonly message: string; readonly code: string; readonly capacity: boolean }
  | { readonly type: 'stats'; readonly stats: SchedulerStats }
  | { readonly type: 'fatal'; readonly message: string }
  | { readonly type: 'closed' };
