/**
 * Issue 7's training runs on the GPU: the MoE model (configs/train/minimax-tiny.json) and a dense model of equal
 * active compute (configs/train/dense-tiny.json: one expert as wide as the MoE's two active ones) trained on the
 * same tokens, same schedule, same seed.
 *
 *   LMOE_TRAIN_SECONDS  wall-clock budget of EACH run (default 200): a 12-step probe of the MoE model times a step,
 *                       and both runs get the number of steps that fits (the cosine schedule follows it)
 *   LMOE_TRAIN_STEPS    a fixed step count instead of the budget
 *   LMOE_TRAIN_OUT      where the runs write their logs and checkpoints (default runs/bench)
 *   LMOE_BENCH_OUT      results file to merge train_* metrics into (default bench/results/h200.json)
 *   LMOE_TRAIN_SERIES   the loss curves (default bench/results/h200-train.json; scripts/loss-chart.mjs draws them)
 *   LMOE_EXPORT         if set, the MoE model's final weights are exported there in bf16 (the embedded model)
 *   LMOE_TRAIN_SUFFIX   appended to the metric names and the series file (a second comparison, e.g. _1epoch)
 *
 * Metrics: train_tokens_per_s (MoE, median over the steps after the first 5), train_final_loss (MoE, final
 * validation cross-entropy), and the _dense twins. No PyTorch baseline: there is no reference implementation of
 * this architecture's training to run beside it (noted in bench/METRICS.md).
 */

import fs from 'node:fs';
import path from 'node:path';
import { countParameters } from '../src/config/size.js';
import { loadTrainConfig, type TrainConfig } from '../src/train/config.js';
import { prepareRun } from '../src/train/run.js';
import type { StepRecord } from '../src/train/trainer.js';
import { gitCommit, median, mergeResults, today } from './common.js';

const log = (s: string): void => console.log(s);

interface RunResult {
  name: string;
  config: string;
  params: number;
  activeParams: number;
  steps: number;
  tokens: number;
  tokensPerSec: number;
  finalValLoss: number;
  finalTrainLoss: number;
  seconds: number;
  records: (Pick<StepRecord, 'step' | 'loss' | 'valLoss' | 'lr'> & { tokensSeen: number })[];
}

/**
 * Total and active (per token) parameters; unlike `lmoe inspect`'s "active per token", the input embedding table
 * counts as active here too (it is trained on every token).
 */
function paramCounts(cfg: TrainConfig): { total: number; active: number } {
  const p = countParameters(cfg.model);
  const table = cfg.model.tieWordEmbeddings ? 0 : cfg.model.vocabSize * cfg.model.hiddenSize;
  return { total: p.total, active: p.activePerToken + table };
}

async function trainOne(file: string, name: string, steps: number, outRoot: string): Promise<RunResult> {
  const cfg0 = await loadTrainConfig(file);
  const cfg: TrainConfig = { ...cfg0, data: { ...cfg0.data, cacheDir: path.join(outRoot, 'cache') }, run: { ...cfg0.run, out: path.join(outRoot, name), device: 'cuda', saveEvery: 0 } };
  fs.rmSync(cfg.run.out, { recursive: true, force: true });
  const r = await prepareRun(cfg, { steps, onStatus: (s) => log(`${name}: ${s}`) });
  const counts = paramCounts(cfg);
  log(`${name}: ${(counts.total / 1e6).toFixed(2)}M parameters (${(counts.active / 1e6).toFixed(2)}M active), ${r.trainTokens.toLocaleString('en-US')} training tokens, ${steps} steps`);
  const records: RunResult['records'] = [];
  let seen = 0;
  const t0 = performance.now();
  const last = r.trainer.run(r.loader, r.validation, {
    onRecord: (rec) => {
      seen += rec.tokens;
      records.push({ step: rec.step, loss: rec.loss, valLoss: rec.valLoss, lr: rec.lr, tokensSeen: seen });
      if (rec.valLoss !== undefined || rec.step % 50 === 0) {
        log(`${name} step ${rec.step}: loss ${rec.loss.toFixed(3)}${rec.valLoss !== undefined ? ` val ${rec.valLoss.toFixed(3)}` : ''} grad ${rec.gradNorm.toFixed(2)} ${Math.round(rec.tokensPerSec)} tok/s`);
      }
    },
  });
  const seconds = (performance.now() - t0) / 1000;
  const tps = median(readTokensPerSec(path.join(cfg.run.out, 'log.jsonl')).slice(5));
  const result: RunResult = {
    name, config: path.relative(process.cwd(), file), params: counts.total, activeParams: counts.active, steps, tokens: seen,
    tokensPerSec: tps, finalValLoss: last?.valLoss ?? NaN, finalTrainLoss: last?.loss ?? NaN, seconds, records,
  };
  if (name === 'moe' && process.env.LMOE_EXPORT) {
    // Shards of ≤ 12 MiB: what comes back from the device machine is limited per file.
    r.trainer.export(process.env.LMOE_EXPORT, 'BF16', { maxShardBytes: 12 << 20, tokenizer: false });
    log(`exported the MoE model (bf16) to ${process.env.LMOE_EXPORT}`);
  }
  r.trainer.dispose();
  return result;
}

function readTokensPerSec(file: string): number[] {
  return fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as StepRecord).tokensPerSec);
}

async function main(): Promise<void> {
  const outRoot = process.env.LMOE_TRAIN_OUT ?? path.join('runs', 'bench');
  const moeFile = 'configs/train/minimax-tiny.json', denseFile = 'configs/train/dense-tiny.json';
  let steps = Number(process.env.LMOE_TRAIN_STEPS ?? 0);
  if (!steps) {
    const budget = Number(process.env.LMOE_TRAIN_SECONDS ?? 200);
    const probeSteps = 12;
    const probe = await trainOne(moeFile, 'probe', probeSteps, outRoot);
    const perStep = probe.seconds / probeSteps; // includes compilation and one validation: errs on the short side
    steps = Math.max(20, Math.floor((budget / perStep) * 0.85));
    log(`probe: ${perStep.toFixed(3)} s/step → ${steps} steps for ${budget} s`);
  }
  const runs = [await trainOne(moeFile, 'moe', steps, outRoot), await trainOne(denseFile, 'dense', steps, outRoot)];
  const [moe, dense] = runs;
  const gpu = process.env.LMOE_GPU_NAME ?? 'NVIDIA H200';
  const commit = gitCommit();
  const details = (r: RunResult): Record<string, unknown> => ({
    commit, date: today(), config: r.config, params: r.params, active_params: r.activeParams, steps: r.steps, tokens: r.tokens, seconds: r.seconds,
    final_train_loss: r.finalTrainLoss,
  });
  const sfx = process.env.LMOE_TRAIN_SUFFIX ?? '';
  const file = mergeResults([
    { name: `train_tokens_per_s${sfx}`, value: moe.tokensPerSec, unit: 'tokens/s', baseline: null, details: details(moe) },
    { name: `train_final_loss${sfx}`, value: moe.finalValLoss, unit: 'nats/token', baseline: null, details: details(moe) },
    { name: `train_tokens_per_s_dense${sfx}`, value: dense.tokensPerSec, unit: 'tokens/s', baseline: null, details: details(dense) },
    { name: `train_final_loss_dense${sfx}`, value: dense.finalValLoss, unit: 'nats/token', baseline: null, details: details(dense) },
  ], gpu);
  log(`merged train_* into ${file}`);
  const series = process.env.LMOE_TRAIN_SERIES ?? path.join('bench', 'results', `h200-train${sfx}.json`);
  const corpus = process.env.LMOE_CORPUS_NAME ?? 'corpus: see docs/training-data.md';
  fs.writeFileSync(series, JSON.stringify({ date: today(), commit, gpu, corpus, runs }, null, 1) + '\n');
  log(`loss curves written to ${series}`);
  for (const r of runs) log(`${r.name}: final val ${r.finalValLoss.toFixed(4)}, train ${r.finalTrainLoss.toFixed(4)}, ${Math.round(r.tokensPerSec)} tokens/s, ${r.steps} steps in ${r.seconds.toFixed(1)} s`);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.stack ?? e.message : String(e));
  process.exitCode = 1;
});
