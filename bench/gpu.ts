/**
 * `npm run bench`: GPU figures written to bench/results/h200.json (or $LMOE_BENCH_OUT) in the format of
 * DEVELOPERS.md, plus a short table on stdout.
 *
 *  gpu_fixture_logits_max_rel_err           worst row max|Δ|/max|ref| of the fixture logits over rows not downstream
 *                                           of a routing flip, against the float64 reference (bf16 checkpoints) or
 *                                           the CPU with the same bf16 weights (fp32 checkpoints) — gpu-parity.ts
 *  gpu_fixture_logits_max_rel_err_all_rows  the same over every row
 *  gpu_fixture_rows_after_routing_flip      rows at or after a token whose experts differ from the fp32 choice
 *  gpu_fixture_greedy_match                 1 if greedy decoding equals gen.ids on every fixture, else 0 (a
 *                                           divergence within the top 5 passes the tests but counts 0 here)
 *  slice_decode_tokens_per_s_b1    slice model, one sequence, short context, tokens/s (graphs, device argmax)
 *  slice_decode_bw_fraction_b1     bytes read per decoded token ÷ step time ÷ 4.28e12 (measured H200 copy rate)
 *  slice_prefill_tokens_per_s_n4k  slice model, one 4096-token prompt
 *
 * Timing: warm-up first (kernel compilation, graph capture), then wall-clock around steps that each end in a
 * device→host copy (so the host clock brackets finished work); the median of repetitions for prefill.
 */
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { CudaBackend } from '../src/backend/cuda/cuda-backend.js';
import { MiniMax01 } from '../src/model/minimax01.js';
import { Rng } from '../src/engine/sampling.js';
import { fixtureParity } from '../test/helpers/gpu-parity.js';
import { decodeBytesPerToken, randomWeights, sliceConfig } from './slice.js';

const PEAK_BW = 4.28e12;

interface Result {
  name: string;
  value: number;
  unit: string;
  baseline: { name: string; value: number } | null;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function main(): Promise<void> {
  const results: Result[] = [];
  const log = (s: string): void => console.log(s);

  // ---- fixture parity ----
  let worst = 0, worstAll = 0, flipRows = 0, allMatch = true;
  for (const name of ['tiny', 'tiny-bf16', 'tiny-hf', 'small-d128']) {
    const r = await fixtureParity(name);
    log(
      `fixture ${name.padEnd(11)} logits max rel err ${r.maxRelErr.toExponential(2)} vs ${r.reference} (${r.vsFloat64.toExponential(2)} vs float64; rows not after a routing flip), ` +
        `${r.maxRelErrAllRows.toExponential(2)} (all), ${r.rowsAfterFlip}/${r.rows} rows after a flip; greedy ${r.greedyMatch ? 'match' : `diverged at ${r.firstDivergence}`}`,
    );
    worst = Math.max(worst, r.maxRelErr);
    worstAll = Math.max(worstAll, r.maxRelErrAllRows);
    flipRows += r.rowsAfterFlip;
    allMatch &&= r.greedyMatch;
  }
  results.push({ name: 'gpu_fixture_logits_max_rel_err', value: worst, unit: 'ratio', baseline: null });
  results.push({ name: 'gpu_fixture_logits_max_rel_err_all_rows', value: worstAll, unit: 'ratio', baseline: null });
  results.push({ name: 'gpu_fixture_rows_after_routing_flip', value: flipRows, unit: 'rows', baseline: null });
  results.push({ name: 'gpu_fixture_greedy_match', value: allMatch ? 1 : 0, unit: 'bool', baseline: null });

  // ---- the slice model ----
  const b = new CudaBackend();
  const c = sliceConfig();
  const t0 = performance.now();
  const weights = randomWeights(b, c);
  b.synchronize();
  log(`slice weights generated on the GPU in ${((performance.now() - t0) / 1000).toFixed(1)} s (${(b.allocator.stats().usedBytes / 1e9).toFixed(1)} GB in use)`);
  const net = new MiniMax01(c, b, weights, 'bf16');
  const rng = new Rng(42);
  const randomIds = (n: number): number[] => Array.from({ length: n }, () => Math.floor(rng.next() * c.vocabSize));

  // decode, batch 1, short context
  const ctx0 = 32;
  const seq = net.newSequence();
  net.forward([{ state: seq, tokens: randomIds(ctx0) }], { logits: 'none' });
  let id = 1;
  const greedy = [{ temperature: 0, topK: 0, topP: 1, seed: 0, step: 0 }];
  for (let i = 0; i < 8; i++) id = net.forwardSample([{ state: seq, tokens: [id] }], greedy)[0]; // warm-up + graph capture
  const steps = 64;
  const t1 = performance.now();
  for (let i = 0; i < steps; i++) id = net.forwardSample([{ state: seq, tokens: [id] }], greedy)[0];
  const msPerToken = (performance.now() - t1) / steps;
  const bytes = decodeBytesPerToken(c, ctx0 + 8 + steps / 2);
  const tps = 1000 / msPerToken;
  const bwFraction = bytes / (msPerToken / 1000) / PEAK_BW;
  log(`slice decode b1: ${msPerToken.toFixed(3)} ms/token, ${tps.toFixed(1)} tokens/s, ${(bytes / 1e9).toFixed(2)} GB/token → ${(bytes / (msPerToken / 1000) / 1e12).toFixed(2)} TB/s (${(bwFraction * 100).toFixed(1)} % of 4.28 TB/s)`);
  results.push({ name: 'slice_decode_tokens_per_s_b1', value: tps, unit: 'tokens/s', baseline: null });
  results.push({ name: 'slice_decode_bw_fraction_b1', value: bwFraction, unit: 'ratio', baseline: null });
  seq.dispose();

  // prefill, one 4096-token prompt
  const N = 4096;
  const times: number[] = [];
  for (let rep = 0; rep < 4; rep++) {
    const s = net.newSequence();
    const ids = randomIds(N);
    const t = performance.now();
    net.forward([{ state: s, tokens: ids }], { logits: 'last' });
    if (rep > 0) times.push(performance.now() - t); // rep 0 warms up (compilation, allocations)
    s.dispose();
  }
  const prefillMs = median(times);
  log(`slice prefill 4K: ${prefillMs.toFixed(1)} ms → ${(N / (prefillMs / 1000)).toFixed(0)} tokens/s`);
  results.push({ name: 'slice_prefill_tokens_per_s_n4k', value: N / (prefillMs / 1000), unit: 'tokens/s', baseline: null });

  const out = {
    date: new Date().toISOString().slice(0, 10),
    commit: process.env.LMOE_COMMIT ?? 'unknown',
    gpu: b.ctx.info.name,
    host: `${os.cpus()[0]?.model ?? 'cpu'}, Node ${process.version}`,
    results,
  };
  const file = process.env.LMOE_BENCH_OUT ?? path.join('bench', 'results', 'h200.json');
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(out, null, 2) + '\n');
  log('\nname                              value          unit');
  for (const r of results) log(`${r.name.padEnd(33)} ${r.value.toPrecision(4).padStart(12)}   ${r.unit}`);
  log(`written to ${file}`);
  net.dispose();
}

await main();
