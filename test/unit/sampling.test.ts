/**
 * Sampler and its helpers, without a model (src/engine/sampling.ts): greedy = argmax with ties to the lower id
 * (temperature 0 and topK 1 are greedy); seeded determinism; empirical frequencies against softmax(logits / T)
 * (chi-square and a per-token 4.5σ bound); top-k never leaves the k best (ties at the boundary go to the lower id);
 * top-p keeps the smallest prefix whose mass reaches p, whatever constant the logits are shifted by; topIndices
 * against a full sort (heap and sort paths, ties, -Infinity, offsets); validateSampling's errors; Rng's range and
 * uniformity.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng, Sampler, argmax, topIndices, validateSampling, type SamplingParams } from '../../src/engine/sampling.js';
import { InvalidArgumentError } from '../../src/util/errors.js';
import { TOP_P_BOUNDARY_CASES } from '../helpers/top-p-cases.js';

/** softmax(logits / T) in float64. */
function softmax(logits: ArrayLike<number>, T = 1): number[] {
  const max = Math.max(...Array.from(logits));
  const e = Array.from(logits, (l) => Math.exp((l - max) / T));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

function counts(sampler: Sampler, logits: Float32Array, draws: number, offset?: number, n?: number): number[] {
  const c = new Array<number>(n ?? logits.length).fill(0);
  for (let i = 0; i < draws; i++) c[sampler.sample(logits, offset, n)]++;
  return c;
}

/** Chi-square goodness of fit over the tokens with p > 0 (tokens with p = 0 must never be drawn) plus a per-token bound. */
function assertMatches(c: number[], p: number[], what: string): void {
  const N = c.reduce((a, b) => a + b, 0);
  let chi2 = 0, df = -1;
  for (let i = 0; i < p.length; i++) {
    if (p[i] === 0) {
      assert.equal(c[i], 0, `${what}: token ${i} has probability 0 but was drawn ${c[i]} times`);
      continue;
    }
    const e = N * p[i];
    chi2 += (c[i] - e) ** 2 / e;
    df++;
    const sigma = Math.sqrt(N * p[i] * (1 - p[i]));
    assert.ok(Math.abs(c[i] - e) <= 4.5 * sigma + 1, `${what}: token ${i} drawn ${c[i]} times, expected ${e.toFixed(1)} ± ${sigma.toFixed(1)}`);
  }
  // chi-square critical values at p ≈ 1e-6 for df = 1..4 (df 0: one token only, all draws on it)
  const crit = [0, 23.9, 27.6, 30.7, 33.4][df] ?? 40;
  assert.ok(chi2 <= crit, `${what}: chi-square ${chi2.toFixed(2)} > ${crit} (df ${df}); counts ${c.join(',')}, expected ${p.map((x) => (N * x).toFixed(0)).join(',')}`);
}

/** Reference: indices sorted by value descending, ties to the lower index. */
function refOrder(values: ArrayLike<number>): number[] {
  return Array.from({ length: values.length }, (_, i) => i).sort((a, b) => (values[b] - values[a]) || (a - b));
}

/** A small deterministic PRNG for building test inputs (independent of the one under test). */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

function expectInvalid(fn: () => unknown, param: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${String(e)}`);
    assert.equal(e.param, param);
    assert.ok(e.message.includes(param), `message should name ${param}: ${e.message}`);
    return true;
  });
}

test('argmax: first maximum wins (ties to the lower id), honours offset/n, -Infinity rows', () => {
  assert.equal(argmax(Float32Array.from([1, 5, 3, 5, 2])), 1);
  assert.equal(argmax(Float32Array.from([7, 7, 7])), 0);
  assert.equal(argmax(Float32Array.from([-3, -1, -1, -2])), 1);
  // offset/n: result is relative to offset
  const buf = Float32Array.from([100, 1, 4, 4, 2, 100]);
  assert.equal(argmax(buf, 1, 4), 1);
  assert.equal(argmax(Float32Array.from([-Infinity, -Infinity, 0, -Infinity])), 2);
});

test('greedy: temperature 0 and topK 1 are argmax with ties to the lower id, whatever the seed', () => {
  const rnd = lcg(7);
  for (let trial = 0; trial < 50; trial++) {
    // integer logits from a small range so that ties for the maximum are common
    const logits = Float32Array.from({ length: 37 }, () => Math.floor(rnd() * 6));
    const want = refOrder(logits)[0];
    for (const params of [{ temperature: 0 }, { topK: 1 }, { topK: 1, temperature: 5, topP: 0.5 }, { temperature: 0, topK: 10, topP: 0.3 }] as SamplingParams[]) {
      const s = new Sampler({ ...params, seed: trial });
      assert.ok(s.greedy);
      for (let k = 0; k < 3; k++) assert.equal(s.sample(logits), want, `${JSON.stringify(params)} trial ${trial}`);
    }
  }
  assert.equal(new Sampler({ temperature: 0.7, seed: 1 }).greedy, false);
  assert.equal(new Sampler({ topK: 2, seed: 1 }).greedy, false);
  // offset/n: the id is relative to offset
  const buf = Float32Array.from([9, 9, 0, 3, 3, 1, 9]);
  assert.equal(new Sampler({ temperature: 0 }).sample(buf, 2, 4), 1);
});

test('same seed ⇒ same sequence of draws; different seeds ⇒ different sequences', () => {
  const logits = Float32Array.from([0.3, 1.2, -0.5, 0.9, 0.0, 0.7, -1.1, 0.4]);
  const configs: SamplingParams[] = [{}, { temperature: 0.8 }, { temperature: 1.3, topK: 5 }, { topP: 0.9 }, { temperature: 0.8, topK: 6, topP: 0.9 }];
  for (const cfg of configs) {
    const run = (seed: number): string => {
      const s = new Sampler({ ...cfg, seed });
      return Array.from({ length: 200 }, () => s.sample(logits)).join(',');
    };
    assert.equal(run(42), run(42), `${JSON.stringify(cfg)} seed 42 twice`);
    assert.equal(run(Number.MAX_SAFE_INTEGER), run(Number.MAX_SAFE_INTEGER));
    assert.equal(run(-5), run(-5));
    const seqs = new Set([0, 1, 2, 3, 42, 1234, 2 ** 40 + 7].map(run));
    assert.equal(seqs.size, 7, `${JSON.stringify(cfg)}: distinct seeds gave identical draw sequences`);
  }
  // Rng itself
  const a = new Rng(5), b = new Rng(5), c = new Rng(6);
  const xa = Array.from({ length: 100 }, () => a.next());
  assert.deepEqual(Array.from({ length: 100 }, () => b.next()), xa);
  assert.notDeepEqual(Array.from({ length: 100 }, () => c.next()), xa);
  // unseeded samplers are random: two of them agreeing on 200 draws over 8 tokens is practically impossible
  const u1 = new Sampler({}), u2 = new Sampler({});
  const d1 = Array.from({ length: 200 }, () => u1.sample(logits)).join(',');
  const d2 = Array.from({ length: 200 }, () => u2.sample(logits)).join(',');
  assert.notEqual(d1, d2);
});

test('temperature sampling: empirical frequencies match softmax(logits / T)', () => {
  const logits = Float32Array.from([2.0, 1.0, 0.5, -1.0, 0.0]);
  const N = 20_000;
  for (const T of [0.5, 1, 2.5]) {
    for (const seed of [1, 2]) {
      const c = counts(new Sampler({ temperature: T, seed }), logits, N);
      assertMatches(c, softmax(logits, T), `T=${T} seed=${seed}`);
    }
  }
  // with an offset into a larger buffer (a row of a batch)
  const buf = new Float32Array(12).fill(50);
  buf.set(logits, 4);
  const c = counts(new Sampler({ temperature: 1, seed: 9 }), buf, N, 4, 5);
  assertMatches(c, softmax(logits, 1), 'offset 4');
});

test('top-k + temperature: frequencies match the renormalised top-k distribution', () => {
  const logits = Float32Array.from([2.0, 1.0, 0.5, -1.0, 0.0]);
  const N = 20_000;
  for (const [k, T] of [[3, 1], [2, 0.7], [4, 2]] as const) {
    const c = counts(new Sampler({ temperature: T, topK: k, seed: 11 }), logits, N);
    const keep = new Set(refOrder(logits).slice(0, k));
    const w = softmax(logits, T).map((p, i) => (keep.has(i) ? p : 0));
    const s = w.reduce((a, b) => a + b, 0);
    assertMatches(c, w.map((x) => x / s), `topK=${k} T=${T}`);
  }
  // topK ≥ vocabulary = no truncation
  const c = counts(new Sampler({ topK: 50, seed: 3 }), logits, N);
  assertMatches(c, softmax(logits), 'topK > n');
});

test('top-k never returns a token outside the k best, ties at the boundary going to the lower id', () => {
  // hand-made boundary tie: values 3 > 2 = 2 = 2; k = 3 keeps ids 1, 2, 3 and never 5 (same value, higher id)
  const small = Float32Array.from([1, 3, 2, 2, 0, 2]);
  const seen = new Set(counts(new Sampler({ topK: 3, temperature: 100, seed: 1 }), small, 3000).flatMap((n, i) => (n > 0 ? [i] : [])));
  assert.deepEqual([...seen].sort(), [1, 2, 3]);

  // vocabulary-sized rows with many ties (heap path for small k, sort path for large k)
  const rnd = lcg(123);
  const V = 1024;
  for (const k of [1, 2, 7, 50, 127, 128, 129, 600]) {
    const logits = Float32Array.from({ length: V }, () => Math.floor(rnd() * 40) / 4);
    const allowed = new Set(refOrder(logits).slice(0, k));
    const s = new Sampler({ topK: k, temperature: 100, seed: k });
    const drawn = new Set<number>();
    // (the sort path costs a full sort per draw, so fewer draws there)
    for (let i = 0, draws = k <= 50 ? 4000 : 300; i < draws; i++) {
      const id = s.sample(logits);
      assert.ok(allowed.has(id), `topK=${k}: drew ${id} (logit ${logits[id]}), outside the ${k} best`);
      drawn.add(id);
    }
    // near-uniform over k tokens: small k sets are fully covered
    if (k <= 50) assert.equal(drawn.size, k, `topK=${k}: only ${drawn.size} distinct tokens drawn`);
  }
});

test('top-p keeps the smallest prefix whose mass reaches p (boundary exact, any logit shift)', () => {
  const probs = [0.5, 0.3, 0.15, 0.05];
  const cases = TOP_P_BOUNDARY_CASES;
  const N = 20_000;
  // A constant shift leaves softmax unchanged; the nucleus must not depend on how f32 rounds the shifted logits.
  for (const shift of [0, 3, -7, 13.5, -20, 37]) {
    const logits = Float32Array.from(probs, (p) => Math.log(p) + shift);
    for (const [p, keep] of cases) {
      const c = counts(new Sampler({ topP: p, seed: 17 }), logits, shift === 0 ? N : 3000);
      const drawn = c.flatMap((n, i) => (n > 0 ? [i] : []));
      assert.deepEqual(drawn, keep, `topP=${p} shift=${shift}: drew ${drawn} (counts ${c})`);
      if (shift === 0) {
        const w = probs.map((x, i) => (keep.includes(i) ? x : 0));
        const s = w.reduce((a, b) => a + b, 0);
        assertMatches(c, w.map((x) => x / s), `topP=${p}`);
      }
    }
  }
  // order matters, not position: the same distribution permuted
  const perm = Float32Array.from([0.15, 0.05, 0.5, 0.3], Math.log);
  const drawn = counts(new Sampler({ topP: 0.8, seed: 4 }), perm, 5000).flatMap((n, i) => (n > 0 ? [i] : []));
  assert.deepEqual(drawn, [2, 3]);
  // top-k then top-p on the renormalised top-k mass: top 3 = 0.95; p = 0.84 of that is 0.798 < 0.8 ⇒ two tokens
  const logits = Float32Array.from(probs, Math.log);
  assert.deepEqual(counts(new Sampler({ topK: 3, topP: 0.84, seed: 5 }), logits, 5000).flatMap((n, i) => (n > 0 ? [i] : [])), [0, 1]);
  assert.deepEqual(counts(new Sampler({ topK: 3, topP: 0.85, seed: 5 }), logits, 5000).flatMap((n, i) => (n > 0 ? [i] : [])), [0, 1, 2]);
  // temperature is applied before top-p: T = 0.5 squares the probabilities (0.25, 0.09, 0.0225, 0.0025 over 0.365),
  // so p(0) ≈ 0.685: topP 0.68 keeps one token, 0.69 two (at T = 1 both would keep two)
  const sharp = (p: number): number[] => counts(new Sampler({ temperature: 0.5, topP: p, seed: 6 }), logits, 5000).flatMap((n, i) => (n > 0 ? [i] : []));
  assert.deepEqual(sharp(0.68), [0]);
  assert.deepEqual(sharp(0.69), [0, 1]);
});

test('topIndices equals a full sort (heap and sort paths, ties, -Infinity, offsets)', () => {
  const rnd = lcg(99);
  for (const n of [1, 2, 9, 64, 1000, 1024]) {
    for (const ties of [false, true]) {
      const offset = 5;
      const buf = new Float32Array(offset + n + 3).fill(1e9); // values outside the window must be ignored
      for (let i = 0; i < n; i++) {
        buf[offset + i] = ties ? Math.floor(rnd() * 8) - 4 : (rnd() - 0.5) * 20;
        if (rnd() < 0.05) buf[offset + i] = -Infinity;
      }
      const ref = refOrder(buf.subarray(offset, offset + n));
      const ms = new Set([1, 2, 3, Math.floor(n / 8) - 1, Math.floor(n / 8), Math.floor(n / 8) + 1, Math.floor(n / 2), n - 1, n].filter((m) => m >= 1 && m <= n));
      for (const m of ms) {
        const out = new Int32Array(n);
        const got = topIndices(buf, offset, n, m, out);
        assert.equal(got.length, m, `n=${n} m=${m}`);
        assert.deepEqual(Array.from(got), ref.slice(0, m), `n=${n} m=${m} ties=${ties} (${m * 8 >= n ? 'sort' : 'heap'} path)`);
      }
    }
  }
  // all equal: ids in order
  const flat = new Float32Array(100);
  assert.deepEqual(Array.from(topIndices(flat, 0, 100, 5, new Int32Array(100))), [0, 1, 2, 3, 4]);
});

test('validateSampling (and the Sampler constructor) reject out-of-range parameters, naming them', () => {
  for (const t of [-0.1, -1, NaN, Infinity, 100.01, 1000]) {
    expectInvalid(() => validateSampling({ temperature: t }), 'temperature');
    expectInvalid(() => new Sampler({ temperature: t }), 'temperature');
  }
  for (const p of [0, -0.5, 1.0001, 2, NaN]) expectInvalid(() => validateSampling({ topP: p }), 'topP');
  for (const k of [-1, 1.5, NaN, Infinity]) expectInvalid(() => validateSampling({ topK: k }), 'topK');
  for (const s of [1.5, NaN, Infinity, 2 ** 53]) expectInvalid(() => validateSampling({ seed: s }), 'seed');
  // boundaries that are allowed
  for (const ok of [{}, { temperature: 0 }, { temperature: 100 }, { topP: 1 }, { topP: 1e-9 }, { topK: 0 }, { topK: 100000 }, { seed: 0 }, { seed: -3 }, { seed: Number.MAX_SAFE_INTEGER }] as SamplingParams[]) {
    assert.doesNotThrow(() => validateSampling(ok), JSON.stringify(ok));
    assert.doesNotThrow(() => new Sampler(ok));
  }
});

test('Rng: outputs lie in [0, 1) and are uniform', () => {
  for (const seed of [0, 1, 0xffffffff, -1, 2 ** 40]) {
    const r = new Rng(seed);
    const N = 100_000, B = 20;
    const bins = new Array<number>(B).fill(0);
    let sum = 0;
    for (let i = 0; i < N; i++) {
      const x = r.next();
      assert.ok(x >= 0 && x < 1, `seed ${seed}: ${x} outside [0, 1)`);
      bins[Math.floor(x * B)]++;
      sum += x;
    }
    const e = N / B;
    const chi2 = bins.reduce((a, c) => a + (c - e) ** 2 / e, 0);
    assert.ok(chi2 < 60, `seed ${seed}: chi-square ${chi2.toFixed(1)} over ${B} bins (df 19)`);
    assert.ok(Math.abs(sum / N - 0.5) < 0.005, `seed ${seed}: mean ${sum / N}`);
  }
});

test('top-p over a large vocabulary: the heap fast path draws exactly what the full sort draws', () => {
  const n = 20_000;
  const rng = new Rng(99);
  for (const [scale, topP] of [[1, 0.9], [4, 0.5], [0.05, 0.95], [8, 0.999]] as const) {
    // scale 0.05 makes the distribution flat, so the nucleus exceeds the fast path's candidates and it must fall back
    const logits = Float32Array.from({ length: n }, () => scale * (rng.next() * 2 - 1) * 6);
    const fast = new Sampler({ temperature: 1, topP, seed: 5 });
    const slow = new Sampler({ temperature: 1, topP, topK: n, seed: 5 }); // topK = n forces the full sort
    for (let i = 0; i < 200; i++) assert.equal(fast.sample(logits), slow.sample(logits), `draw ${i}, scale ${scale}, p ${topP}`);
  }
});

test('seeds that differ only in their high 32 bits give different streams', () => {
  const draws = (seed: number) => Array.from({ length: 8 }, ((r) => () => r.next())(new Rng(seed)));
  for (const [a, b] of [[1, 2 ** 32], [0, 2 ** 32 + 0], [5, 5 + 2 ** 40], [-1, 2 ** 32 - 1], [2 ** 53 - 1, 2 ** 53 - 2]]) {
    assert.notDeepEqual(draws(a), draws(b), `seeds ${a} and ${b}`);
  }
});
