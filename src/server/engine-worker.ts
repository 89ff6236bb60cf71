/**
 * The engine thread (SERVING.md C4): loads the model, runs the continuous-batching scheduler and reports tokens.
 * Started by EngineClient with the worker config as workerData; talks only through engine-protocol messages, so
 * a long forward pass never blocks the HTTP thread.
 */

import { parentPort, workerData } from 'node:worker_threads';
import { KV_BLOCK_SIZE } from '../backend/backend.js';
import { loadModel, type Model } from '../engine/model.js';
import type { SampledToken, SequenceHandle } from '../engine/scheduler.js';
import { CapacityError, LightningMoeError } from '../util/errors.js';
import type { EngineWorkerConfig, FromEngine, ToEngine } from './engine-protocol.js';

const port = parentPort!;
const config = workerData as EngineWorkerConfig;
const post = (m: FromEngine): void => port.postMessage(m);

let model: Model;
try {
  model = await loadModel(config.dir, { device: config.device, cache: config.cache, onProgress: (event) => post({ type: 'progress', event }) });
} catch (err) {
  post({ type: 'fatal', message: err instanceof Error ? err.message : String(err) });
  process.exit(1);
}

const scheduler = model.createScheduler({ maxBatchTokens: config.maxBatchTokens, maxModelLen: config.maxModelLen });
const handles = new Map<number, SequenceHandle>();
/** Tokens of the current step, sent as one message per sequence after the step. */
const pending = new Map<number, SampledToken[]>();

function flush(): void {
  for (const [id, tokens] of pending) post({ type: 'tokens', id, tokens });
  pending.clear();
}

port.on('message', (m: ToEngine) => {
  if (m.type === 'submit') {
    try {
      const h = scheduler.submit(m.request, {
        onScheduled: () => post({ type: 'scheduled', id: m.id }),
        onToken: (t) => {
          const list = pending.get(m.id);
          if (list) list.push(t);
          else pending.set(m.id, [t]);
        },
        onFinish: (reason, usage) => {
          flush();
          handles.delete(m.id);
          post({ type: 'finish', id: m.id, reason, ...usage });
        },
        onError: (e) => {
          flush();
          handles.delete(m.id);
          post({ type: 'error', id: m.id, message: e.message, code: e instanceof LightningMoeError ? e.code : 'INTERNAL', capacity: false });
        },
      });
      handles.set(m.id, h);
    } catch (e) {
      const err = e as Error;
      post({ type: 'error', id: m.id, message: err.message, code: err instanceof LightningMoeError ? err.code : 'INTERNAL', capacity: err instanceof CapacityError });
    }
  } else if (m.type === 'abort') {
    handles.get(m.id)?.abort();
    handles.delete(m.id);
    pending.delete(m.id);
  } else if (m.type === 'shutdown') {
    scheduler.abortAll();
    scheduler.stop();
  }
});

const cache = model.cacheUsage;
post({
  type: 'ready',
  device: model.device,
  maxSequenceTokens: scheduler.maxSequenceTokens,
  maxSequences: cache.maxSequences,
  kvTokens: cache.maxKvBlocks * KV_BLOCK_SIZE,
});

// The loop: one step, then the step's tokens and stats, then a turn of the event loop for new messages.
let lastSteps = -1;
const statsTimer = setInterval(() => {
  const s = scheduler.stats;
  if (s.steps !== lastSteps || !scheduler.busy) post({ type: 'stats', stats: s });
  lastSteps = s.steps;
}, 100);
try {
  await scheduler.run({ afterStep: flush });
} catch (err) {
  post({ type: 'fatal', message: err instanceof Error ? err.message : String(err) });
}
clearInterval(statsTimer);
post({ type: 'stats', stats: scheduler.stats });
model.dispose();
post({ type: 'closed' });
port.close();
