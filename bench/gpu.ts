/**
 * `npm run bench`: GPU figures written to bench/results/h200.json (or $LMOE_BENCH_OUT), plus a short table on stdout.
 * Metric definitions, shapes, seeds and scales: bench/METRICS.md.
 *
 *  gpu_fixture_logits_max_rel_err           worst row max|Δ|/max|ref| of the fixture logits over rows not downstream
 *                                           of a routing flip, against the float64 reference (bf16 checkpoints) or
 *                                           the CPU with the same bf16 weights (fp32 checkpoints) — gpu-parity.ts
 *  gpu_fixture_logits_max_rel_err_all_rows  the same over every row
 *  gpu_fixture_rows_after_routing_flip      rows at or after a token whose experts differ from the fp32 choice
 *  gpu_fixture_greedy_match                 1 if greedy decoding equals gen.ids on every fixture, else 0 (a
 *                                           divergence within the top 5 passes the tests but counts 0 here)
 *  lightning_prefill_ms_h8_d128_n1m             kernel metrics on our ops with the METRICS.md inputs, each checked
 *  lightning_decode_tbps_h64_b256               against float64 on a slice first (check_rel_err = max|Δ|/max|ref|)
 *  attention_prefill_tflops_h64_kv8_d128_n16k   and timed with CUDA events: bench/kernels.ts
 *  attention_decode_tbps_n1m
 *  moe_expert_gemm_tflops_4k_tokens_per_expert
 *  slice_decode_tokens_per_s_b1    slice model, one sequence, short context, tokens/s (graphs, device argmax)
 *  slice_decode_bw_fraction_b1     bytes read per decoded token ÷ step time ÷ 4.28e12 (measured H200 copy rate)
 *  slice_decode_tokens_per_s_b64   slice model, 64 sequences (128-token random prompts, one varlen prefill), decode
 *                                  steps of all 64 together (forwardSample as a CUDA graph): 64 · steps ÷ time
 *  slice_prefill_tokens_per_s_n4k  slice model, one 4096-token prompt
 *  slice_prefill_mfu_n32k          slice model, one 32,768-token prompt (logits 'last'): counted FLOPs ÷ time ÷ 790e12
 *
 * Baselines: when $LMOE_BASELINES names the JSON written by bench/baselines.py ({torch, device, results: [{metric,
 * baseline, value, unit, check_rel_err, details, reason?}]}), each of our results with the same name gets
 * `baseline: {name, value}` and `speedup` (ours ÷ theirs for rates, theirs ÷ ours for times such as ms); results
 * without one keep `baseline: null`.
 *
 * Subsets: $LMOE_BENCH_ONLY = comma-separated metric-name prefixes runs only the matching metrics (the fixture
 * parity, the kernels and the slice model are each skipped when none of theirs match). A subset run writes only its
 * results, with `only` set, and defaults to bench/results/h200-only.json so the full file is not overwritten.
 *
 * Timing: kernels with CUDA events (bench/kernels.ts). The slice model: warm-up first (kernel compilation, graph
 * capture, workspace growth), then wall-clock around steps that each end in a device→host copy (so the host clock
 * brackets finished work); the median of repetitions.
 */
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { CudaBackend } from '../src/backend/cuda/cuda-backend.js';
import { CudaContext } from '../src/backend/cuda/driver.js';
import { MiniMax01 } from '../src/model/minimax01.js';
import type { ModelConfig } from '../src/config/config.js';
import { Rng } from '../src/engine/sampling.js';
import { fixtureParity } from '../test/helpers/gpu-parity.js';
import { decodeBytesPerToken, randomWeights, sliceConfig } from './slice.js';
import { KERNEL_METRICS, kernelBenchmarks } from './kernels.js';
import { gitCommit, median, today } from './common.js';

const PEAK_BW = 4.28e12;
/** Measured bf16 dense GEMM rate of the H200 (docs/gpu-notes.md). */
const PEAK_FLOPS = 790e12;

interface Result {
  name: string;
  value: number;
  unit: string;
  baseline: { name: string; value: number } | null;
  speedup?: number | null;
  check_rel_err?: number;
  baseline_check_rel_err?: number | null;
  baseline_reason?: string;
  details?: Record<string, unknown>;
}

interface BaselineEntry {
  metric: string;
  baseline: string;
  value: number | null;
  unit: string;
  check_rel_err?: number | null;
  details?: unknown;
  reason?: string;
}

interface BaselineFile {
  torch?: string;
  device?: string;
  results: BaselineEntry[];
}

const FIXTURE_METRICS = ['gpu_fixture_logits_max_rel_err', 'gpu_fixture_logits_max_rel_err_all_rows', 'gpu_fixture_rows_after_routing_flip', 'gpu_fixture_greedy_match'];
const SLICE_METRICS = ['slice_decode_tokens_per_s_b1', 'slice_decode_bw_fraction_b1', 'slice_decode_tokens_per_s_b64', 'slice_prefill_tokens_per_s_n4k', 'slice_prefill_mfu_n32k'];
/** Every metric this script writes (a failed one is dropped from the file, not left stale). */
const METRIC_NAMES: ReadonlySet<string> = new Set([...FIXTURE_METRICS, ...KERNEL_METRICS, ...SLICE_METRICS]);
/** Units whose smaller values are better: speedup = theirs ÷ ours. */
const TIME_UNITS = new Set(['ms', 's', 'us', 'µs', 'ns']);

function loadBaselines(log: (s: string) => void): BaselineFile | undefined {
  const file = process.env.LMOE_BASELINES;
  if (!file) return undefined;
  try {
    const parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as BaselineFile;
    if (!Array.isArray(parsed.results)) throw new Error('no "results" array');
    log(`baselines: ${parsed.results.length} entries from ${file} (torch ${parsed.torch ?? '?'}, ${parsed.device ?? '?'})`);
    return parsed;
  } catch (e) {
    log(`WARNING: LMOE_BASELINES=${file} could not be read (${(e as Error).message}); no baselines attached`);
    return undefined;
  }
}

function attachBaseline(r: Result, e: BaselineEntry | undefined, log: (s: string) => void): void {
  if (!e) return;
  if (typeof e.value !== 'number' || !Number.isFinite(e.value) || e.value <= 0) {
    r.baseline_reason = e.reason ?? `baseline value ${String(e.value)}`;
    return;
  }
  r.baseline = { name: e.baseline, value: e.value };
  if (typeof e.check_rel_err === 'number' || e.check_rel_err === null) r.baseline_check_rel_err = e.check_rel_err;
  if (e.unit !== r.unit) {
    log(`WARNING: ${r.name}: our unit '${r.unit}' differs from the baseline's '${e.unit}'; no speedup computed`);
    r.speedup = null;
    return;
  }
  r.speedup = TIME_UNITS.has(r.unit) ? e.value / r.value : r.value / e.value;
}

/** The result with its keys in a fixed order (name, value, unit, baseline, speedup, checks, details). */
function ordered(r: Result): Result {
  const o: Result = { name: r.name, value: r.value, unit: r.unit, baseline: r.baseline };
  if (r.speedup !== undefined) o.speedup = r.speedup;
  if (r.check_rel_err !== undefined) o.check_rel_err = r.check_rel_err;
  if (r.baseline_check_rel_err !== undefined) o.baseline_check_rel_err = r.baseline_check_rel_err;
  if (r.baseline_reason !== undefined) o.baseline_reason = r.baseline_reason;
  if (r.details !== undefined) o.details = r.details;
  return o;
}

/**
 * FLOPs of one T-token prefill of the slice model (logits for the last row only):
 *
 *   matmul    = 2·T·Σ_layers W_layer + 2·D·V
 *               W_lightning = 3·Hd·D (qkv) + Hd·D (gate) + D·Hd (out)           Hd = H·Dh
 *               W_softmax   = Hd·D (q) + 2·KVd·D (k, v) + D·Hd (o)              KVd = Hkv·Dh
 *               every layer + E·D (router) + K·(2I·D (w13) + D·I (w2))          (the K experts each token uses)
 *   attention = softmax layers:   2·T²·Dh·H                                     (causal QKᵀ and PV: 2 × 2·(T²/2)·Dh·H)
 *             + lightning layers: 2·T·B·Dh·H + 4·T·Dh²·H, B = 256               (intra-block causal QKᵀ and PV over
 *                                                                               half of each B×B block; inter-block
 *                                                                               q·S and kᵀv)
 *
 * Elementwise work (norms, RoPE, SiLU, softmax, routing, combine) is not counted. For the slice at T = 32768:
 * 2·T·4.594e9 + 2·6144·200064 ≈ 3.011e14 matmul + 1.95e13 attention ≈ 3.206e14.
 */
function prefillFlops(c: ModelConfig, T: number): { matmul: number; attention: number } {
  const D = c.hiddenSize, H = c.numHeads, Dh = c.headDim, Hd = H * Dh, KVd = c.numKvHeads * Dh, I = c.intermediateSize;
  const B = c.blockSize;
  let weights = 0, attention = 0;
  for (const kind of c.layerTypes) {
    if (kind === 'lightning') {
      weights += 5 * Hd * D;
      attention += 2 * T * B * Dh * H + 4 * T * Dh * Dh * H;
    } else {
      weights += 2 * Hd * D + 2 * KVd * D;
      attention += 2 * T * T * Dh * H;
    }
    weights += c.numExperts * D + c.numExpertsPerTok * 3 * D * I;
  }
  return { matmul: 2 * T * weights + 2 * D * c.vocabSize, attention };
}

async function main(): Promise<void> {
  const results: Result[] = [];
  const errors: string[] = [];
  const log = (s: string): void => console.log(s);
  const only = (process.env.LMOE_BENCH_ONLY ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  const want = (name: string): boolean => only.length === 0 || only.some((p) => name.startsWith(p));
  if (only.length > 0) log(`LMOE_BENCH_ONLY: ${only.join(', ')}`);
  const push = (r: Result): void => {
    if (want(r.name)) results.push(r);
  };
  const baselines = loadBaselines(log);
  let gpuName = '';

  // ---- fixture parity ----
  if (FIXTURE_METRICS.some(want)) {
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
    push({ name: 'gpu_fixture_logits_max_rel_err', value: worst, unit: 'ratio', baseline: null });
    push({ name: 'gpu_fixture_logits_max_rel_err_all_rows', value: worstAll, unit: 'ratio', baseline: null });
    push({ name: 'gpu_fixture_rows_after_routing_flip', value: flipRows, unit: 'rows', baseline: null });
    push({ name: 'gpu_fixture_greedy_match', value: allMatch ? 1 : 0, unit: 'bool', baseline: null });
  }

  // ---- kernels (their own backend, disposed before the slice model's ~96 GB of weights) ----
  if (KERNEL_METRICS.some(want)) {
    const kb = new CudaBackend();
    gpuName = kb.ctx.info.name;
    try {
      const t0 = performance.now();
      const kr = await kernelBenchmarks(kb, log, want, errors);
      log(`kernel metrics: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      for (const r of kr) push({ name: r.name, value: r.value, unit: r.unit, baseline: null, check_rel_err: r.checkRelErr, details: r.details });
    } finally {
      kb.dispose();
    }
  }

  // ---- the slice model ----
  if (SLICE_METRICS.some(want)) {
    const b = new CudaBackend();
    gpuName = b.ctx.info.name;
    const c = sliceConfig();
    const t0 = performance.now();
    const weights = randomWeights(b, c);
    b.synchronize();
    log(`slice weights generated on the GPU in ${((performance.now() - t0) / 1000).toFixed(1)} s (${(b.allocator.stats().usedBytes / 1e9).toFixed(1)} GB in use)`);
    const net = new MiniMax01(c, b, weights, 'bf16');
    const rng = new Rng(42);
    const randomIds = (n: number): number[] => Array.from({ length: n }, () => Math.floor(rng.next() * c.vocabSize));
    /** Wall-clock ms of three prefills of one fresh N-token prompt each, after one warm-up prefill (compilation,
     *  workspace / scratch growth, KV pool). */
    const timePrefill = (N: number): number[] => {
      const times: number[] = [];
      for (let rep = 0; rep < 4; rep++) {
        const s = net.newSequence();
        const ids = randomIds(N);
        const t = performance.now();
        net.forward([{ state: s, tokens: ids }], { logits: 'last' });
        if (rep > 0) times.push(performance.now() - t);
        s.dispose();
      }
      return times;
    };
    const greedy = (seed: number) => ({ temperature: 0, topK: 0, topP: 1, seed, step: 0 });
    try {
      // decode, batch 1, short context
      if (want('slice_decode_tokens_per_s_b1') || want('slice_decode_bw_fraction_b1')) {
        const ctx0 = 32;
        const seq = net.newSequence();
        net.forward([{ state: seq, tokens: randomIds(ctx0) }], { logits: 'none' });
        let id = 1;
        const params = [greedy(0)];
        for (let i = 0; i < 8; i++) id = net.forwardSample([{ state: seq, tokens: [id] }], params)[0]; // warm-up + graph capture
        const steps = 64;
        const t1 = performance.now();
        for (let i = 0; i < steps; i++) id = net.forwardSample([{ state: seq, tokens: [id] }], params)[0];
        const msPerToken = (performance.now() - t1) / steps;
        const bytes = decodeBytesPerToken(c, ctx0 + 8 + steps / 2);
        const tps = 1000 / msPerToken;
        const bwFraction = bytes / (msPerToken / 1000) / PEAK_BW;
        log(`slice decode b1: ${msPerToken.toFixed(3)} ms/token, ${tps.toFixed(1)} tokens/s, ${(bytes / 1e9).toFixed(2)} GB/token → ${(bytes / (msPerToken / 1000) / 1e12).toFixed(2)} TB/s (${(bwFraction * 100).toFixed(1)} % of 4.28 TB/s)`);
        push({ name: 'slice_decode_tokens_per_s_b1', value: tps, unit: 'tokens/s', baseline: null });
        push({ name: 'slice_decode_bw_fraction_b1', value: bwFraction, unit: 'ratio', baseline: null, details: { ms_per_token: msPerToken, bytes_per_token: bytes, steps } });
        seq.dispose();
      }

      // decode, 64 sequences with 128-token prompts, all 64 stepped together (one CUDA graph per step)
      if (want('slice_decode_tokens_per_s_b64')) {
        const nb = 64, promptLen = 128, warmSteps = 6, groupSteps = 16, groups = 3;
        const seqs = Array.from({ length: nb }, () => net.newSequence());
        net.forward(seqs.map((s) => ({ state: s, tokens: randomIds(promptLen) })), { logits: 'none' }); // one varlen prefill
        let ids: ArrayLike<number> = randomIds(nb);
        const params = seqs.map((_, i) => greedy(i));
        const step = (): void => {
          ids = net.forwardSample(seqs.map((s, i) => ({ state: s, tokens: [ids[i]] })), params);
        };
        for (let i = 0; i < warmSteps; i++) step(); // eager step, capture, replays; KV pool growth happens here
        const groupMs: number[] = [];
        for (let g = 0; g < groups; g++) {
          const t1 = performance.now();
          for (let i = 0; i < groupSteps; i++) step();
          groupMs.push((performance.now() - t1) / groupSteps);
        }
        const msPerStep = median(groupMs);
        const tps = (nb * 1000) / msPerStep;
        log(`slice decode b64: ${msPerStep.toFixed(3)} ms/step (groups of ${groupSteps}: ${groupMs.map((x) => x.toFixed(3)).join(' ')}), ${tps.toFixed(0)} tokens/s; context ${promptLen}…${promptLen + warmSteps + groups * groupSteps}`);
        push({
          name: 'slice_decode_tokens_per_s_b64', value: tps, unit: 'tokens/s', baseline: null,
          details: { ms_per_step: msPerStep, groups_ms_per_step: groupMs, steps_timed: groups * groupSteps, sequences: nb, prompt_tokens: promptLen },
        });
        for (const s of seqs) s.dispose();
      }

      // prefill, one 4096-token prompt
      if (want('slice_prefill_tokens_per_s_n4k')) {
        const N = 4096;
        const prefillMs = median(timePrefill(N));
        log(`slice prefill 4K: ${prefillMs.toFixed(1)} ms → ${(N / (prefillMs / 1000)).toFixed(0)} tokens/s`);
        push({ name: 'slice_prefill_tokens_per_s_n4k', value: N / (prefillMs / 1000), unit: 'tokens/s', baseline: null });
      }

      // prefill, one 32,768-token prompt: MFU
      if (want('slice_prefill_mfu_n32k')) {
        const N = 32768;
        const times = timePrefill(N);
        const ms = median(times);
        const f = prefillFlops(c, N);
        const flops = f.matmul + f.attention;
        const mfu = flops / (ms / 1000) / PEAK_FLOPS;
        log(`slice prefill 32K: ${ms.toFixed(1)} ms (${times.map((x) => x.toFixed(1)).join(' ')}) → ${(N / (ms / 1000)).toFixed(0)} tokens/s, ${(flops / 1e12).toFixed(1)} TFLOP → ${(flops / (ms / 1000) / 1e12).toFixed(1)} TFLOP/s, MFU ${mfu.toFixed(3)}`);
        push({
          name: 'slice_prefill_mfu_n32k', value: mfu, unit: 'ratio', baseline: null,
          details: { ms, times_ms: times, tokens_per_s: N / (ms / 1000), flops_matmul: f.matmul, flops_attention: f.attention, tflops: flops / (ms / 1000) / 1e12, peak_flops: PEAK_FLOPS },
        });
      }
    } catch (e) {
      const msg = `slice model: ${(e as Error).stack ?? String(e)}`;
      log(`FAILED ${msg}`);
      errors.push(msg);
    } finally {
      net.dispose();
    }
  }

  // ---- baselines, output ----
  if (baselines) {
    const byName = new Map(baselines.results.map((e) => [e.metric, e]));
    for (const r of results) attachBaseline(r, byName.get(r.name), log);
  }
  if (!gpuName) {
    try {
      gpuName = CudaContext.get().info.name;
    } catch {
      gpuName = 'unknown';
    }
  }
  const out: Record<string, unknown> = {
    date: today(),
    commit: gitCommit(),
    gpu: gpuName,
    host: `${os.cpus()[0]?.model ?? 'cpu'}, Node ${process.version}`,
  };
  if (baselines) out.baselines = { torch: baselines.torch ?? null, device: baselines.device ?? null };
  if (only.length > 0) out.only = only;
  if (errors.length > 0) out.errors = errors;
  const file = process.env.LMOE_BENCH_OUT ?? path.join('bench', 'results', only.length > 0 ? 'h200-only.json' : 'h200.json');
  // The file also holds the rows of the other bench scripts (long-context.ts, train.ts, merged by name): keep
  // those, replace this script's.
  const others = fs.existsSync(file) ? ((JSON.parse(fs.readFileSync(file, 'utf8')) as { results?: { name: string }[] }).results ?? []).filter((r) => !METRIC_NAMES.has(r.name)) : [];
  out.results = [...results.map(ordered), ...others];
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(out, null, 2) + '\n');

  const num = (x: number | null | undefined, p = 4): string => (x === null || x === undefined ? '—' : Number.isFinite(x) ? x.toPrecision(p) : String(x));
  log(`\n${'name'.padEnd(44)} ${'value'.padStart(11)}  ${'unit'.padEnd(9)} ${'baseline'.padStart(11)}  ${'speedup'.padStart(8)}  ${'check'.padStart(9)}`);
  for (const r of results) {
    log(`${r.name.padEnd(44)} ${num(r.value).padStart(11)}  ${r.unit.padEnd(9)} ${num(r.baseline?.value).padStart(11)}  ${num(r.speedup, 3).padStart(8)}  ${num(r.check_rel_err, 2).padStart(9)}`);
  }
  for (const e of errors) log(`ERROR ${e.split('\n')[0]}`);
  log(`written to ${file}`);
  if (errors.length > 0) process.exitCode = 1;
}

await main();
