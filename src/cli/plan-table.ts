/**
 * The memory plan (engine/memory-plan.ts) as the table `lmoe inspect --context` prints: one row per item with its
 * size in binary units and in exact bytes, and what it is made of.
 */

import type { ModelConfig } from '../config/config.js';
import type { MemoryPlan } from '../engine/memory-plan.js';
import { formatBytes, formatCount } from '../util/units.js';

/** `deviceNote` says where deviceBytes came from ("--device-memory 141GB", "free on NVIDIA H200"). */
export function formatPlan(plan: MemoryPlan, config: ModelConfig, deviceNote?: string): string {
  const row = (label: string, bytes: number, note = ''): string =>
    `${label.padEnd(24)}${formatBytes(bytes).padStart(11)} ${formatCount(bytes).padStart(20)} B${note ? '   ' + note : ''}`;
  const w = plan.weights, a = plan.activations;
  const nSoft = config.layerTypes.filter((t) => t === 'softmax').length;
  const nLin = config.numLayers - nSoft;
  const seqs = `${formatCount(plan.sequences)} sequence${plan.sequences === 1 ? '' : 's'}`;
  const chunkWhy = {
    given: 'as given',
    fit: plan.fits ? 'the largest power of two that fits' : 'the smallest the planner picks; none fits',
    default: 'the default; no device size to fit',
  }[plan.prefillChunkSource];
  const lines = [
    `memory plan for ${config.modelType}: ${formatCount(plan.contextTokens)}-token context × ${seqs}, ${plan.weightDType} weights, ${plan.activationDType} activations and KV cache`,
    row('weights', w.total, `${plan.weightDType}, routers and slopes fp32`),
    row('  embeddings + lm_head', w.embeddings, config.tieWordEmbeddings ? 'tied' : ''),
    row('  attention', w.attention, `${nLin} lightning + ${nSoft} softmax layers`),
    row('  experts', w.experts, `${config.numLayers} × ${config.numExperts} × (w13 + w2)`),
    row('  routers', w.routers, 'fp32'),
    row('  norms', w.norms),
    row('KV cache', plan.kvCache.bytes, `${formatCount(plan.kvCache.blocks)} blocks of 64 tokens × ${formatBytes(plan.kvCache.bytesPerBlock)} (${nSoft} softmax layers, K and V)`),
    row('lightning states', plan.lightningStates.bytes, `${formatCount(plan.lightningStates.slots)} × ${formatBytes(plan.lightningStates.bytesPerSlot)} (${nLin} layers × ${config.numHeads} heads × ${config.headDim}², fp32)`),
    row('activations', a.total, `${formatCount(plan.prefillChunk)}-token prefill chunk (${chunkWhy})`),
    row('  model workspace', a.workspace, 'residual stream, norms, projections, router, logits'),
    row('  lightning workspace', a.lightningWorkspace, 'per-block states of one prefill pass, ≤ 1 GiB'),
    row('  MoE scratch', a.moe, `${formatCount(a.tokens * config.numExpertsPerTok)} expert slots`),
    row('  attention decode', a.attentionDecode, 'split-K partials'),
    row('reserve', plan.reserveBytes, 'CUDA context, cuBLAS, allocator rounding'),
    row('total', plan.totalBytes),
  ];
  if (plan.deviceBytes === undefined) {
    lines.push('verdict                 none: give --device-memory SIZE, or --device cuda to read the GPU');
  } else {
    lines.push(row('device memory', plan.deviceBytes, deviceNote ?? ''));
    lines.push(
      plan.fits
        ? `verdict                 fits, ${formatBytes(plan.deviceBytes - plan.totalBytes)} to spare`
        : `verdict                 does not fit: ${plan.reason}`,
    );
  }
  return lines.join('\n');
}
