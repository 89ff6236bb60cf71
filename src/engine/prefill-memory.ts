/**
 * The memory check before a generation's prefill: the engine side of memory-plan.ts.
 *
 * On a backend that reports its device memory (CUDA), the plan for the request's whole context (prompt plus
 * generation budget) must fit what lightning-moe can have — the device's free memory plus what it already holds —
 * or the request is refused with the plan's one-line CapacityError before any token is computed. The plan counts
 * what the engine already holds besides this sequence (other sequences' KV blocks, free blocks of the pool, old
 * pools held while the pool grows with blocks in use, other allocated lightning state slots). Then the KV cache for
 * the whole context is reserved in one allocation, so the pool is not regrown (and copied) midway. Not counted:
 * workspace buffers an earlier, larger pass left bigger than this plan needs (they only grow); DEVICE_RESERVE_BYTES
 * is the margin for such differences.
 *
 * On backends without a device memory limit (the CPU, whose tensors live on the garbage-collected heap) nothing
 * is refused; the plan still picks the prefill chunk size.
 */

import type { MiniMax01 } from '../model/minimax01.js';
import { kvBlocksFor } from '../model/cache.js';
import { planMemory, refuse, type MemoryPlan } from './memory-plan.js';
import type { Session } from './session.js';

/** Plans `contextTokens` for `session` on `net`, refuses it when it cannot fit, reserves its KV cache. */
export function preparePrefill(net: MiniMax01, session: Session, contextTokens: number, prefillChunk: number | undefined): MemoryPlan {
  const plan = planPrefill(net, session, contextTokens, prefillChunk);
  if (plan.fits === false) refuse(plan);
  session.reserve(contextTokens);
  return plan;
}

/** The memory plan of `contextTokens` more for `session`, counting what `net` already holds besides it. */
export function planPrefill(net: MiniMax01, session: Session, contextTokens: number, prefillChunk: number | undefined): MemoryPlan {
  const pool = net.cache;
  const planned = kvBlocksFor(contextTokens);
  const growth = pool.kvGrowthFor(Math.max(0, planned - session.kvBlocks));
  const info = net.backend.memoryInfo?.();
  return planMemory({
    config: net.config,
    contextTokens,
    prefillChunk,
    deviceBytes: info ? info.free + info.used : undefined,
    weightDType: net.weights.embed.dtype === 'f32' ? 'f32' : 'bf16',
    activationDType: net.actDType === 'f32' ? 'f32' : 'bf16',
    resident: {
      kvBlocks: pool.hasSoftmaxLayers ? Math.max(0, growth.blocksAfter + growth.heldWhileGrowing - planned) : 0,
      stateSlots: Math.max(0, pool.slotsAllocated - 1),
    },
  });
}
