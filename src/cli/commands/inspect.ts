/**
 * `lmoe inspect`: what a checkpoint (or a bare config.json) describes — architecture summary, parameter counts,
 * weight memory per dtype, per-sequence cache sizes, and, when weights are present, what the shards hold.
 * With --context: the device memory plan for that context (engine/memory-plan.ts) and whether it fits.
 * Reads config.json and safetensors headers only; no weights are loaded.
 */

import fs from 'node:fs/promises';
import path from 'node:path';
import { loadModelConfig, parseModelConfig, readJsonFile, type ModelConfig } from '../../config/config.js';
import { cacheSizes, countParameters, WEIGHT_DTYPES, weightBytes, type WeightDType } from '../../config/size.js';
import { planMemory } from '../../engine/memory-plan.js';
import { ConfigError } from '../../util/errors.js';
import { formatBytes, parseByteSize, parseTokenCount } from '../../util/units.js';
import { Checkpoint } from '../../weights/checkpoint.js';
import { int, parse, str, UsageError } from '../args.js';
import { writeOut } from '../common.js';
import { formatPlan } from '../plan-table.js';

export const help = `Usage: lmoe inspect (--model DIR | --config FILE) [--context SIZE [plan options]] [--json]

Summarises a MiniMax-01 checkpoint without loading its weights: layers, heads, experts, parameter count,
weight memory per dtype (routers stay fp32), lightning-state and KV-cache sizes, and the shards present.

With --context, prints instead the GPU memory plan for that context (bf16 weights and KV cache, as the CUDA
backend stores them): weights by group, KV cache, lightning states, activations of one prefill chunk, a fixed
reserve, the total, the prefill chunk size, and whether it fits the device.

Options:
  -m, --model DIR          checkpoint directory (or a config.json file)
      --config FILE        a config.json file on its own
      --context SIZE       tokens of context per sequence: 65536, 64K, 1M, 1.5M, 4M (K, M = 2^10, 2^20)
      --sequences N        sequences held at once, each with the full context (default 1)
      --prefill-chunk N    tokens per prefill pass (default: the largest power of two from 256 to 8192 that fits)
      --device-memory SIZE device memory to fit in, e.g. 141GB or 139.7GiB (SI and IEC units, or bytes)
      --device cuda        fit in the memory the GPU has free now (what lightning-moe could use)
                           (without --device-memory or --device, the plan is printed without a verdict)
      --json               machine-readable output (with --context: the plan object)
      --verbose            print stack traces on errors
  -h, --help               show this help

Examples:
  lmoe inspect --config ./MiniMax-Text-01/config.json
  lmoe inspect --model ./MiniMax-Text-01 --context 4M --device-memory 139.7GiB`;

export interface InspectReport {
  modelType: string;
  layout: string;
  config: ModelConfig;
  parameters: ReturnType<typeof countParameters>;
  /** Bytes of all weights per storage dtype (routers fp32 in every case). */
  weightBytes: Record<WeightDType, number>;
  lightningStateBytesPerSequence: number;
  kvBytesPerToken: number;
  checkpoint?: { files: number; tensors: number; bytes: number; dtypes: Record<string, number> };
}

export async function run(argv: string[]): Promise<number> {
  const v = parse('inspect', argv, {
    model: { type: 'string', short: 'm' },
    config: { type: 'string' },
    context: { type: 'string' },
    sequences: { type: 'string' },
    'prefill-chunk': { type: 'string' },
    'device-memory': { type: 'string' },
    device: { type: 'string' },
    json: { type: 'boolean' },
    verbose: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (v.help) {
    await writeOut(help + '\n');
    return 0;
  }
  const target = str(v.config) ?? str(v.model);
  if (!target || (v.config !== undefined && v.model !== undefined)) throw new UsageError('give exactly one of --model DIR or --config FILE', 'inspect');
  const planFlags = planOptions(v);
  const stat = await fs.stat(target).catch(() => undefined);
  if (!stat) throw new ConfigError(`${target}: no such file or directory`, { file: target });
  if (planFlags) {
    const config = stat.isDirectory() ? await loadModelConfig(target) : parseModelConfig(await readJsonFile(target, ConfigError), path.basename(target));
    const device = planFlags.deviceMemory !== undefined
      ? { bytes: planFlags.deviceMemory, note: `--device-memory ${str(v['device-memory'])}` }
      : planFlags.readDevice ? await cudaMemory() : undefined;
    const plan = planMemory({
      config,
      contextTokens: planFlags.contextTokens,
      sequences: planFlags.sequences,
      prefillChunk: planFlags.prefillChunk,
      deviceBytes: device?.bytes,
    });
    await writeOut((v.json ? JSON.stringify(plan, null, 2) : formatPlan(plan, config, device?.note)) + '\n');
    return 0;
  }
  let config: ModelConfig;
  let report: InspectReport;
  if (stat.isDirectory()) {
    config = await loadModelConfig(target);
    report = summarize(config);
    if (await hasWeights(target)) {
      const ckpt = await Checkpoint.open(target);
      const dtypes: Record<string, number> = {};
      let bytes = 0;
      for (const t of ckpt.tensors.values()) {
        dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + 1;
        bytes += t.byteLength;
      }
      report.checkpoint = { files: ckpt.files.length, tensors: ckpt.tensors.size, bytes, dtypes };
      await ckpt.close();
    }
  } else {
    config = parseModelConfig(await readJsonFile(target, ConfigError), path.basename(target));
    report = summarize(config);
  }
  await writeOut(v.json ? JSON.stringify(report, null, 2) + '\n' : format(report) + '\n');
  return 0;
}

interface PlanFlags {
  readonly contextTokens: number;
  readonly sequences: number | undefined;
  readonly prefillChunk: number | undefined;
  readonly deviceMemory: number | undefined;
  /** --device cuda: fit in what the GPU has free. */
  readonly readDevice: boolean;
}

/** The --context plan flags, or undefined without --context; a UsageError naming the flag for a bad value. */
function planOptions(v: Record<string, unknown>): PlanFlags | undefined {
  const context = str(v.context);
  if (context === undefined) {
    const stray = ['sequences', 'prefill-chunk', 'device-memory', 'device'].find((f) => v[f] !== undefined);
    if (stray) throw new UsageError(`--${stray} needs --context SIZE (it sets up a memory plan)`, 'inspect');
    return undefined;
  }
  const sized = (flag: string, parse: (s: string) => number): number | undefined => {
    const s = str(v[flag]);
    if (s === undefined) return undefined;
    try {
      return parse(s);
    } catch (e) {
      throw new UsageError(`--${flag}: ${(e as Error).message}`, 'inspect');
    }
  };
  const device = str(v.device);
  if (device !== undefined && device !== 'cuda') throw new UsageError(`--device: expected cuda (to read the GPU's free memory), got "${device}"`, 'inspect');
  if (device !== undefined && v['device-memory'] !== undefined) throw new UsageError('give at most one of --device-memory SIZE or --device cuda', 'inspect');
  return {
    contextTokens: sized('context', parseTokenCount)!,
    sequences: int(v.sequences, 'sequences', 1, 'inspect'),
    prefillChunk: int(v['prefill-chunk'], 'prefill-chunk', 1, 'inspect'),
    deviceMemory: sized('device-memory', parseByteSize),
    readDevice: device === 'cuda',
  };
}

/** What lightning-moe could use on GPU 0 now: the free memory as the CUDA backend reports it (context excluded). */
async function cudaMemory(): Promise<{ bytes: number; note: string }> {
  const { createBackend } = await import('../../backends.js');
  const choice = await createBackend('cuda');
  try {
    const info = choice.backend.memoryInfo?.();
    if (!info) throw new UsageError('--device cuda: the backend does not report its memory', 'inspect');
    const bytes = info.free + info.used;
    return { bytes, note: `free on ${choice.deviceName} (of ${formatBytes(info.total)})` };
  } finally {
    choice.backend.dispose?.();
  }
}

async function hasWeights(dir: string): Promise<boolean> {
  for (const f of ['model.safetensors.index.json', 'model.safetensors']) {
    if (await fs.access(path.join(dir, f)).then(() => true, () => false)) return true;
  }
  return false;
}

export function summarize(config: ModelConfig): InspectReport {
  const parameters = countParameters(config);
  const caches = cacheSizes(config);
  const wb = Object.fromEntries(Object.keys(WEIGHT_DTYPES).map((d) => [d, weightBytes(config, d as WeightDType)])) as Record<WeightDType, number>;
  return {
    modelType: config.modelType,
    layout: config.layout,
    config,
    parameters,
    weightBytes: wb,
    lightningStateBytesPerSequence: caches.lightningStateBytesPerSeq,
    kvBytesPerToken: caches.kvBytesPerToken,
  };
}

const n = (x: number): string => x.toLocaleString('en-US');
function human(bytes: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0, v = bytes;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function format(r: InspectReport): string {
  const c = r.config, p = r.parameters;
  const softmaxAt = c.layerTypes.flatMap((t, i) => (t === 'softmax' ? [i] : []));
  const nLin = c.numLayers - softmaxAt.length;
  const lines = [
    `model_type         ${c.modelType} (${c.layout === 'original' ? 'original remote-code' : 'transformers-native'} layout)${c.architectures.length ? ', ' + c.architectures.join(', ') : ''}`,
    `layers             ${c.numLayers}: ${nLin} lightning + ${softmaxAt.length} softmax${softmaxAt.length ? ` (softmax at ${abbreviate(softmaxAt)})` : ''}`,
    `hidden size        ${c.hiddenSize}`,
    `heads              ${c.numHeads} × ${c.headDim} (lightning and softmax queries), ${c.numKvHeads} kv heads`,
    `rope               ${c.rotaryDim} of ${c.headDim} dims, θ = ${c.ropeTheta}`,
    `experts            ${c.numExperts} × ${c.intermediateSize}, top-${c.numExpertsPerTok}`,
    `vocab              ${c.vocabSize}${c.tieWordEmbeddings ? ' (tied lm_head)' : ''}`,
    `residual α / β     lightning ${c.alpha.lightning} / ${c.beta.lightning}, softmax ${c.alpha.softmax} / ${c.beta.softmax}, mlp ${c.alpha.mlp} / ${c.beta.mlp}`,
    `parameters         ${n(p.total)} (${(p.total / 1e9).toFixed(2)} B)`,
    `  lightning        ${n(p.lightning)}`,
    `  softmax          ${n(p.softmax)}`,
    `  experts          ${n(p.experts)}`,
    `  routers          ${n(p.routers)}`,
    `  embeddings       ${n(p.embeddings)}`,
    `  norms            ${n(p.norms)}`,
    `active per token   ${n(p.activePerToken)} (${(p.activePerToken / 1e9).toFixed(2)} B, lm_head included)`,
    `weight memory      (routers fp32)`,
    ...Object.entries(r.weightBytes).map(([d, b]) => `  ${d.padEnd(16)} ${n(b)} bytes (${human(b)})`),
    `checkpoint size    ${n(r.weightBytes.bf16)} bytes in bf16`,
    `per sequence       lightning state ${n(r.lightningStateBytesPerSequence)} bytes (fp32, fixed); KV cache ${n(r.kvBytesPerToken)} bytes per token (bf16)`,
  ];
  if (r.checkpoint) {
    const d = Object.entries(r.checkpoint.dtypes).map(([k, v]) => `${v} ${k}`).join(', ');
    lines.push(`on disk            ${r.checkpoint.tensors} tensors in ${r.checkpoint.files} file(s), ${n(r.checkpoint.bytes)} bytes (${d})`);
  }
  return lines.join('\n');
}

function abbreviate(xs: number[]): string {
  return xs.length <= 6 ? xs.join(', ') : `${xs.slice(0, 3).join(', ')}, …, ${xs[xs.length - 1]}`;
}
