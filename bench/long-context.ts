/**
 * Issue 6 runs on the GPU: million-token contexts. Not timed tests: each figure is what this script measured.
 *
 *   node dist/bench/long-context.js slice      slice model (bench/slice.ts): the scaling series — prefill of
 *                                              N = 4K, 16K, 64K, 256K, 1M tokens split by layer kind, and the
 *                                              batch-1 decode latency after each — whose 1M point is
 *                                              `slice_prefill_1m_s`
 *   node dist/bench/long-context.js tp8share   the "TP8 share" model (hidden 6144, 8 layers: 7 lightning + 1
 *                                              softmax, 8 query heads × 128, 1 kv head, 4 experts × 9216 top-2,
 *                                              vocab 200064): `tp8share_prefill_4m_s` (4·2^20 tokens) and
 *                                              `tp8share_decode_ms_at_4m`
 *
 * Each prompt is one sequence prefilled from an empty cache in chunks (LMOE_LONG_CHUNK, default 16384 for the
 * slice and 32768 for the TP8 share), logits for the last token only; the time is wall clock from the first chunk
 * to the first token's logits on the host. Random token ids, random bf16 weights generated on the GPU (never
 * zeros). The layer-kind split comes from CUDA events recorded at layer boundaries through the model's trace hook
 * (which records nothing else and does not change the kernels that run): per layer, "attention" is input norm →
 * FFN norm (the attention block and its postnorm residual), "moe" is FFN norm → layer output. "other" is the rest
 * of the wall time (embedding, lm_head, host work between chunks).
 *
 * Decode latency: after the prefill, greedy decode steps of that one sequence (CUDA graphs, device sampling):
 * 4 warm-up steps, then the median of 3 groups of 8 steps.
 *
 * Results are merged into $LMOE_BENCH_OUT (default bench/results/h200.json) by metric name, leaving the other
 * entries alone; each entry carries the commit and date it was measured at. The slice series goes to
 * bench/results/h200-scaling.json (docs/scaling.svg is drawn from it by scripts/scaling-chart.mjs).
 */
import fs from 'node:fs';
import path from 'node:path';
import { CudaBackend } from '../src/backend/cuda/cuda-backend.js';
import { MiniMax01, type TraceHook } from '../src/model/minimax01.js';
import type { ModelConfig } from '../src/config/config.js';
import { KV_BLOCK_SIZE } from '../src/backend/backend.js';
import { Rng } from '../src/engine/sampling.js';
import { randomWeights, sliceConfig } from './slice.js';
import { gitCommit, median, mergeResults, today } from './common.js';

const log = (s: string): void => console.log(s);

interface LayerSplit {
  /** Milliseconds of GPU time per layer kind and part, summed over the chunks. */
  lightningAttention: number;
  softmaxAttention: number;
  moe: number;
}

interface PrefillRun {
  tokens: number;
  chunk: number;
  seconds: number;
  split: LayerSplit;
  otherSeconds: number;
}

interface DecodeRun {
  context: number;
  msPerToken: number;
  groupsMs: number[];
}

type Handle = unknown;

/** Prefill `N` random tokens into a fresh sequence in chunks, timing each layer's parts with events. */
function prefill(b: CudaBackend, net: MiniMax01, N: number, chunk: number, rng: Rng, keep: boolean): { run: PrefillRun; seq: ReturnType<MiniMax01['newSequence']> } {
  const c = net.config;
  const ctx = b.ctx;
  const pool: Handle[] = [];
  const event = (): Handle => pool.pop() ?? ctx.createEvent();
  const marks: { name: string; layer: number; ev: Handle }[] = [];
  const trace: TraceHook = (name, layer) => {
    if (name !== 'attn_norm' && name !== 'ffn_norm' && name !== 'l_out') return;
    const ev = event();
    ctx.record(ev as never);
    marks.push({ name, layer, ev });
  };
  const split: LayerSplit = { lightningAttention: 0, softmaxAttention: 0, moe: 0 };
  const seq = net.newSequence();
  const ids = (n: number): number[] => Array.from({ length: n }, () => Math.floor(rng.next() * c.vocabSize));
  b.synchronize();
  const t0 = performance.now();
  let lastProgress = t0;
  for (let done = 0; done < N; ) {
    const n = Math.min(chunk, N - done);
    const last = done + n === N;
    net.forward([{ state: seq, tokens: ids(n) }], { logits: last ? 'last' : 'none', trace });
    // Fold this chunk's events into the split (waits for the chunk's last event).
    const at = new Map(marks.map((m) => [`${m.name}:${m.layer}`, m.ev]));
    for (let l = 0; l < c.numLayers; l++) {
      const a = at.get(`attn_norm:${l}`), f = at.get(`ffn_norm:${l}`), o = at.get(`l_out:${l}`);
      if (a === undefined || f === undefined || o === undefined) throw new Error(`layer ${l}: trace events missing`);
      const attn = ctx.elapsedMs(a as never, f as never);
      if (c.layerTypes[l] === 'lightning') split.lightningAttention += attn;
      else split.softmaxAttention += attn;
      split.moe += ctx.elapsedMs(f as never, o as never);
    }
    for (const m of marks) pool.push(m.ev);
    marks.length = 0;
    done += n;
    const now = performance.now();
    if (now - lastProgress > 10_000 || last) {
      const s = (now - t0) / 1000;
      log(`  prefill ${done.toLocaleString('en-US')} / ${N.toLocaleString('en-US')} tokens, ${s.toFixed(1)} s, ${(done / s).toFixed(0)} tokens/s`);
      lastProgress = now;
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  const gpu = (split.lightningAttention + split.softmaxAttention + split.moe) / 1000;
  if (!keep) seq.dispose();
  return { run: { tokens: N, chunk, seconds, split, otherSeconds: Math.max(0, seconds - gpu) }, seq };
}

/** Batch-1 greedy decode latency of `seq` (graphs): 4 warm-up steps, median of 3 groups of 8. */
function decodeLatency(net: MiniMax01, seq: ReturnType<MiniMax01['newSequence']>): DecodeRun {
  const params = [{ temperature: 0, topK: 0, topP: 1, seed: 0, step: 0 }];
  let id = 1;
  const context = seq.position;
  for (let i = 0; i < 4; i++) id = net.forwardSample([{ state: seq, tokens: [id] }], params)[0];
  const groupsMs: number[] = [];
  for (let g = 0; g < 3; g++) {
    const t = performance.now();
    for (let i = 0; i < 8; i++) id = net.forwardSample([{ state: seq, tokens: [id] }], params)[0];
    groupsMs.push((performance.now() - t) / 8);
  }
  return { context, msPerToken: median(groupsMs), groupsMs };
}

function newModel(b: CudaBackend, c: ModelConfig, maxTokens: number): MiniMax01 {
  const t0 = performance.now();
  const weights = randomWeights(b, c);
  b.synchronize();
  log(`weights generated on the GPU in ${((performance.now() - t0) / 1000).toFixed(1)} s (${(b.allocator.stats().usedBytes / 1e9).toFixed(1)} GB in use)`);
  // KV pools sized once for the longest run (no growth copies mid-prefill).
  const blocks = Math.ceil((maxTokens + 64) / KV_BLOCK_SIZE);
  return new MiniMax01(c, b, weights, 'bf16', { maxSequences: 2, initialKvBlocks: blocks, maxKvBlocks: blocks });
}

const fmtSplit = (s: LayerSplit): string => `lightning attention ${(s.lightningAttention / 1000).toFixed(2)} s, softmax attention ${(s.softmaxAttention / 1000).toFixed(2)} s, MoE ${(s.moe / 1000).toFixed(2)} s`;

function sliceSeries(): void {
  const b = new CudaBackend();
  const c = sliceConfig();
  const sizes = (process.env.LMOE_LONG_SIZES ?? '4096,16384,65536,262144,1048576').split(',').map(Number);
  const chunk = Number(process.env.LMOE_LONG_CHUNK ?? 16384);
  const net = newModel(b, c, Math.max(...sizes) + 64);
  const rng = new Rng(6);
  prefill(b, net, 4096, chunk, rng, false); // warm-up: kernel compilation, workspace growth
  const series: { prefill: PrefillRun; decode: DecodeRun }[] = [];
  for (const N of sizes) {
    log(`slice: prefill ${N.toLocaleString('en-US')} tokens (chunks of ${chunk})`);
    const { run, seq } = prefill(b, net, N, chunk, rng, true);
    log(`slice prefill ${N}: ${run.seconds.toFixed(2)} s (${(N / run.seconds).toFixed(0)} tokens/s); ${fmtSplit(run.split)}, other ${run.otherSeconds.toFixed(2)} s`);
    const dec = decodeLatency(net, seq);
    log(`slice decode at ${dec.context}: ${dec.msPerToken.toFixed(3)} ms/token (${dec.groupsMs.map((x) => x.toFixed(3)).join(' ')})`);
    seq.dispose();
    series.push({ prefill: run, decode: dec });
  }
  const commit = gitCommit();
  const scaling = {
    date: today(), commit, gpu: b.ctx.info.name, model: 'slice (hidden 6144, 8 layers: 7 lightning + 1 softmax, 64 × 128 heads, 8 kv heads, 32 experts × 9216 top-2)',
    chunk, series: series.map((s) => ({
      tokens: s.prefill.tokens, prefill_s: s.prefill.seconds,
      lightning_attention_s: s.prefill.split.lightningAttention / 1000, softmax_attention_s: s.prefill.split.softmaxAttention / 1000,
      moe_s: s.prefill.split.moe / 1000, other_s: s.prefill.otherSeconds,
      decode_context: s.decode.context, decode_ms_per_token: s.decode.msPerToken, decode_groups_ms: s.decode.groupsMs,
    })),
  };
  const scalingFile = process.env.LMOE_SCALING_OUT ?? path.join('bench', 'results', 'h200-scaling.json');
  fs.writeFileSync(scalingFile, JSON.stringify(scaling, null, 2) + '\n');
  log(`scaling series written to ${scalingFile}`);
  const m = series.find((s) => s.prefill.tokens === 1 << 20);
  if (m) {
    mergeResults([{
      name: 'slice_prefill_1m_s', value: m.prefill.seconds, unit: 's', baseline: null,
      details: {
        commit, date: today(), tokens: m.prefill.tokens, chunk, tokens_per_s: m.prefill.tokens / m.prefill.seconds,
        lightning_attention_s: m.prefill.split.lightningAttention / 1000, softmax_attention_s: m.prefill.split.softmaxAttention / 1000,
        moe_s: m.prefill.split.moe / 1000, other_s: m.prefill.otherSeconds, decode_ms_per_token_after: m.decode.msPerToken,
      },
    }], b.ctx.info.name);
    log('merged slice_prefill_1m_s');
  }
  net.dispose();
}

function tp8share(): void {
  const b = new CudaBackend();
  const c = sliceConfig({ num_attention_heads: 8, num_key_value_heads: 1, num_local_experts: 4 });
  const N = Number(process.env.LMOE_LONG_TOKENS ?? 4 * (1 << 20));
  const chunk = Number(process.env.LMOE_LONG_CHUNK ?? 32768);
  const net = newModel(b, c, N + 64);
  const rng = new Rng(8);
  prefill(b, net, 4096, chunk, rng, false); // warm-up
  log(`tp8share: prefill ${N.toLocaleString('en-US')} tokens (chunks of ${chunk})`);
  const { run, seq } = prefill(b, net, N, chunk, rng, true);
  log(`tp8share prefill ${N}: ${run.seconds.toFixed(2)} s (${(N / run.seconds).toFixed(0)} tokens/s); ${fmtSplit(run.split)}, other ${run.otherSeconds.toFixed(2)} s`);
  const dec = decodeLatency(net, seq);
  log(`tp8share decode at ${dec.context}: ${dec.msPerToken.toFixed(3)} ms/token (${dec.groupsMs.map((x) => x.toFixed(3)).join(' ')})`);
  seq.dispose();
  const commit = gitCommit();
  const common = { commit, date: today(), model: 'TP8 share: hidden 6144, 8 layers (7 lightning + 1 softmax), 8 × 128 heads, 1 kv head, 4 experts × 9216 top-2, vocab 200064', chunk };
  mergeResults([
    {
      name: 'tp8share_prefill_4m_s', value: run.seconds, unit: 's', baseline: null,
      details: { ...common, tokens: N, tokens_per_s: N / run.seconds, lightning_attention_s: run.split.lightningAttention / 1000, softmax_attention_s: run.split.softmaxAttention / 1000, moe_s: run.split.moe / 1000, other_s: run.otherSeconds },
    },
    { name: 'tp8share_decode_ms_at_4m', value: dec.msPerToken, unit: 'ms', baseline: null, details: { ...common, context: dec.context, groups_ms: dec.groupsMs } },
  ], b.ctx.info.name);
  log('merged tp8share_prefill_4m_s, tp8share_decode_ms_at_4m');
  net.dispose();
}

const what = process.argv[2];
if (what === 'slice') sliceSeries();
else if (what === 'tp8share') tp8share();
else {
  console.error('usage: node dist/bench/long-context.js slice|tp8share');
  process.exitCode = 2;
}
