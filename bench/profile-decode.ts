/**
 * Diagnostic (not a benchmark figure): where one slice-model decode step spends its GPU time, op by op.
 *
 * Runs decode steps eagerly (a no-op trace hook turns CUDA graphs off) through a backend proxy that brackets every
 * op with CUDA events, then prints GPU milliseconds per op label (linear ops labelled by weight shape), the bytes
 * each op must read at least (its weights), and the bandwidth that implies. The graph-replayed step of `npm run
 * bench` is the real figure; the sum of op times here shows which ops keep it from the bandwidth floor.
 *
 *   node dist/bench/profile-decode.js [batch=1] [steps=20]
 */
import { CudaBackend } from '../src/backend/cuda/cuda-backend.js';
import type { Backend, Tensor } from '../src/backend/backend.js';
import { MiniMax01 } from '../src/model/minimax01.js';
import { decodeBytesPerToken, randomWeights, sliceConfig } from './slice.js';

const batch = Number(process.argv[2] ?? 1);
const steps = Number(process.argv[3] ?? 20);
const OPS = [
  'embedding', 'linear', 'rmsNorm', 'residualAdd', 'postnormResidual', 'siluInPlace', 'sigmoidMul', 'gatherRows', 'rope',
  'lightningAttention', 'kvAppend', 'attention', 'moeRoute', 'moeExperts', 'sampleTokens',
] as const;

const b = new CudaBackend();
const ctx = b.ctx;
const bytes = (t: Tensor): number => t.shape.reduce((a, x) => a * x, 1) * (t.dtype === 'f32' || t.dtype === 'i32' ? 4 : 2);

interface Mark {
  label: string;
  start: unknown;
  end: unknown;
  minBytes: number;
}
const marks: Mark[] = [];
const eventPool: unknown[] = [];
const event = (): unknown => eventPool.pop() ?? ctx.createEvent();
let recording = false;

const proxy = new Proxy(b, {
  get(target, prop, receiver) {
    const v = Reflect.get(target, prop, receiver);
    if (typeof v !== 'function') return v;
    if (!(OPS as readonly string[]).includes(prop as string)) return v.bind(target);
    return (...args: unknown[]) => {
      if (!recording) return v.apply(target, args);
      let label = prop as string;
      let minBytes = 0;
      if (prop === 'linear') {
        const w = args[2] as Tensor;
        label = `linear [${w.shape.join('×')}] ${w.dtype}`;
        minBytes = bytes(w);
      } else if (prop === 'moeExperts') {
        const [, x, idx, , w13, w2] = args as Tensor[];
        const slots = idx.shape[0] * idx.shape[1];
        const E = w13.shape[0];
        // At least the experts the batch touches: min(slots, E) of them.
        minBytes = (Math.min(slots, E) / E) * (bytes(w13) + bytes(w2)) + bytes(x);
      } else if (prop === 'lightningAttention') {
        const segs = args[3] as { state: Tensor }[];
        minBytes = 2 * segs.reduce((a, s) => a + bytes(s.state), 0);
      } else if (prop === 'embedding') {
        minBytes = 0;
      }
      const s = event(), e = event();
      ctx.record(s as never);
      const r = v.apply(target, args);
      ctx.record(e as never);
      marks.push({ label, start: s, end: e, minBytes });
      return r;
    };
  },
}) as unknown as Backend;

const c = sliceConfig();
const weights = randomWeights(b, c);
const net = new MiniMax01(c, proxy, weights, 'bf16');
const seqs = Array.from({ length: batch }, () => net.newSequence());
const noGraphs = { trace: () => {} };
// A short prompt per sequence, then warm-up steps.
net.forward(seqs.map((s, i) => ({ state: s, tokens: Array.from({ length: 32 }, (_, j) => (i * 131 + j * 7) % c.vocabSize) })), { logits: 'none' });
let ids = seqs.map((_, i) => (i * 17) % c.vocabSize);
for (let i = 0; i < 3; i++) ids = Array.from(net.forwardSample(seqs.map((s, j) => ({ state: s, tokens: [ids[j]] })), seqs.map(() => ({ temperature: 0, topK: 0, topP: 1, seed: 1, step: 0 })), noGraphs));

const totals = new Map<string, { ms: number; calls: number; minBytes: number }>();
let stepMs = 0;
for (let k = 0; k < steps; k++) {
  recording = true;
  const t0 = performance.now();
  ids = Array.from(net.forwardSample(seqs.map((s, j) => ({ state: s, tokens: [ids[j]] })), seqs.map(() => ({ temperature: 0, topK: 0, topP: 1, seed: 1, step: 0 })), noGraphs));
  stepMs += performance.now() - t0;
  recording = false;
  for (const m of marks) {
    const ms = ctx.elapsedMs(m.start as never, m.end as never);
    const t = totals.get(m.label) ?? { ms: 0, calls: 0, minBytes: 0 };
    t.ms += ms;
    t.calls++;
    t.minBytes += m.minBytes;
    totals.set(m.label, t);
    eventPool.push(m.start, m.end);
  }
  marks.length = 0;
}

const rows = [...totals.entries()].sort((a, b) => b[1].ms - a[1].ms);
const gpuMs = rows.reduce((a, [, t]) => a + t.ms, 0) / steps;
console.log(`slice decode, batch ${batch}, ${steps} eager steps: ${gpuMs.toFixed(3)} ms of op GPU time per step (wall ${(stepMs / steps).toFixed(3)} ms eager); floor ${(decodeBytesPerToken(c, 40) / 4.28e12 * 1e3).toFixed(3)} ms at 4.28 TB/s`);
console.log('op'.padEnd(44) + 'ms/step'.padStart(9) + 'calls'.padStart(7) + '  share   min GB/step  GB/s');
for (const [label, t] of rows) {
  const ms = t.ms / steps;
  const gb = t.minBytes / steps / 1e9;
  console.log(
    label.padEnd(44) + ms.toFixed(3).padStart(9) + String(t.calls / steps).padStart(7) + `  ${((100 * ms) / gpuMs).toFixed(1).padStart(5)} %` +
      `${gb > 0 ? gb.toFixed(3).padStart(12) : '—'.padStart(12)}  ${gb > 0 ? ((gb / ms) * 1e3).toFixed(0).padStart(5) : ''}`,
  );
}
for (const s of seqs) s.dispose();
net.dispose();
