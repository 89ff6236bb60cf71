/**
 * `lmoe inspect`: what a checkpoint (or a bare config.json) describes — architecture summary, parameter counts,
 * weight memory per dtype, per-sequence cache sizes, and, when weights are present, what the shards hold.
 * Reads config.json and safetensors headers only; no weights are loaded.
 */

import fs from 'node:fs/promises';
import path from 'node:path';
import { loadModelConfig, parseModelConfig, readJsonFile, type ModelConfig } from '../../config/config.js';
import { cacheSizes, countParameters, WEIGHT_DTYPES, weightBytes, type WeightDType } from '../../config/size.js';
import { ConfigError } from '../../util/errors.js';
import { Checkpoint } from '../../weights/checkpoint.js';
import { parse, str, UsageError } from '../args.js';
import { writeOut } from '../common.js';

export const help = `Usage: lmoe inspect (--model DIR | --config FILE) [--json]

Summarises a MiniMax-01 checkpoint without loading its weights: layers, heads, experts, parameter count,
weight memory per dtype (routers stay fp32), lightning-state and KV-cache sizes, and the shards present.

Options:
  -m, --model DIR        checkpoint directory (or a config.json file)
      --config FILE      a config.json file on its own
      --json             machine-readable output
      --verbose          print stack traces on errors
  -h, --help             show this help

Example:
  lmoe inspect --config ./MiniMax-Text-01/config.json`;

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
  const stat = await fs.stat(target).catch(() => undefined);
  if (!stat) throw new ConfigError(`${target}: no such file or directory`, { file: target });
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
