/**
 * The training model end to end on the CPU (float64): the whole step's gradient against finite differences of the
 * objective, recomputation and accumulation equivalences, loss going down, and checkpoints (resume continues
 * exactly; `lmoe generate`'s loader reads the checkpoint and computes the same loss).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseModelConfig, type ModelConfig } from '../../src/config/config.js';
import { CpuTrainBackend } from '../../src/train/cpu/cpu-train-backend.js';
import { countTargets, TrainModel, type TrainBatch } from '../../src/train/model.js';
import { randomBatch } from '../helpers/train-batch.js';
import { initialValues, NormalRng, ParamSet, paramSpecs } from '../../src/train/params.js';
import { Trainer, type BatchSource, type TrainerOptions } from '../../src/train/trainer.js';
import { loadModel } from '../../src/engine/model.js';

/** A tiny model with both layer kinds, GQA, partial RoPE and 4 experts top-2. */
export function tinyConfig(over: Record<string, unknown> = {}): ModelConfig {
  return parseModelConfig({
    model_type: 'minimax_text_01', postnorm: true,
    vocab_size: 32, hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 1, head_dim: 8, rotary_dim: 4,
    intermediate_size: 8, num_local_experts: 4, num_experts_per_tok: 2, attn_type_list: [0, 1], rope_theta: 10000,
    layernorm_linear_attention_alpha: 1.5, layernorm_full_attention_alpha: 1.5, layernorm_mlp_alpha: 1.5, router_aux_loss_coef: 0.1,
    ...over,
  });
}

function objective(model: TrainModel, params: ParamSet, grads: ParamSet, batch: TrainBatch): number {
  grads.zero();
  const n = countTargets(batch);
  const r = model.step(params.model, grads.model, batch, 1 / n, 1);
  return r.ceSum / n + r.aux + r.z;
}

test('whole-model gradient matches central finite differences of the objective (CE + aux + z-loss), float64', (t) => {
  const c = tinyConfig();
  const b = new CpuTrainBackend();
  const specs = paramSpecs(c, 0.3);
  const params = new ParamSet(b, c, specs, initialValues(specs, 7));
  const grads = new ParamSet(b, c, specs);
  const model = new TrainModel(b, c, { zLossCoef: 0.01 });
  const batch = randomBatch([6, 1, 5], c.vocabSize, 3);
  objective(model, params, grads, batch);
  const g = grads.read();
  const rng = new NormalRng(11);
  let worst = 0;
  for (let i = 0; i < specs.length; i++) {
    const p = b.read(params.tensors[i]);
    for (let trial = 0; trial < 3; trial++) {
      const j = Math.floor(rng.uniform() * p.length);
      const h = 1e-5;
      const at = (v: number): number => {
        const q = p.slice();
        q[j] = v;
        b.write(params.tensors[i], q);
        return objective(model, params, grads, batch);
      };
      const fd = (at(p[j] + h) - at(p[j] - h)) / (2 * h);
      b.write(params.tensors[i], p);
      const err = Math.abs(fd - g[i][j]) / Math.max(1e-6, Math.abs(fd) + Math.abs(g[i][j]));
      worst = Math.max(worst, err);
      assert.ok(err < 1e-5, `${specs[i].key}[${j}]: analytic ${g[i][j]} vs finite difference ${fd}`);
    }
  }
  t.diagnostic(`whole-model gradient vs finite differences: worst relative error ${worst.toExponential(2)} over ${specs.length * 3} entries`);
});

test('recomputation gives the same gradients; two accumulated micro-batches equal one packed batch', () => {
  const c = tinyConfig({ router_aux_loss_coef: 0 });
  const b = new CpuTrainBackend();
  const specs = paramSpecs(c);
  const values = initialValues(specs, 5);
  const params = new ParamSet(b, c, specs, values);
  const batch = randomBatch([7, 4], c.vocabSize, 9);
  const run = (recompute: boolean, batches: TrainBatch[]): Float64Array[] => {
    const grads = new ParamSet(b, c, specs);
    const m = new TrainModel(b, c, { recompute });
    const n = batches.reduce((a, x) => a + countTargets(x), 0);
    for (const x of batches) m.step(params.model, grads.model, x, 1 / n, 1 / batches.length);
    return grads.read();
  };
  const plain = run(false, [batch]);
  const rec = run(true, [batch]);
  plain.forEach((g, i) => assert.deepEqual(rec[i], g, `recompute changed the gradient of ${specs[i].key}`));
  const first: TrainBatch = { ids: batch.ids.slice(0, 7), targets: batch.targets.slice(0, 7), positions: batch.positions.slice(0, 7), offsets: Int32Array.from([0, 7]), maxLength: 7 };
  const second: TrainBatch = { ids: batch.ids.slice(7), targets: batch.targets.slice(7), positions: batch.positions.slice(7), offsets: Int32Array.from([0, 4]), maxLength: 4 };
  const acc = run(false, [first, second]);
  plain.forEach((g, i) => {
    for (let j = 0; j < g.length; j++) assert.ok(Math.abs(acc[i][j] - g[j]) <= 1e-12 * (1 + Math.abs(g[j])), `${specs[i].key}[${j}]: ${acc[i][j]} vs ${g[j]}`);
  });
});

/** An endless source of batches from a tiny repetitive "language" (so a few steps can learn it). */
class PatternSource implements BatchSource {
  private i = 0;
  constructor(private readonly V: number) {}
  next(): TrainBatch {
    const lengths = [12, 9, 11];
    const T = lengths.reduce((a, b) => a + b, 0);
    const ids = new Int32Array(T), targets = new Int32Array(T), positions = new Int32Array(T), offsets = new Int32Array(4);
    let at = 0;
    lengths.forEach((n, d) => {
      const start = (this.i * 7 + d * 3) % this.V;
      for (let k = 0; k < n; k++) {
        ids[at + k] = (start + 2 * k) % this.V; // counting by two from a varying start
        targets[at + k] = k + 1 < n ? (start + 2 * (k + 1)) % this.V : -1;
        positions[at + k] = k;
      }
      at += n;
      offsets[d + 1] = at;
    });
    this.i++;
    return { ids, targets, positions, offsets, maxLength: 12 };
  }
  state(): unknown {
    return { i: this.i };
  }
  static from(V: number, state: unknown): PatternSource {
    const s = new PatternSource(V);
    s.i = (state as { i: number }).i;
    return s;
  }
}

function trainerOptions(c: ModelConfig, out: string | undefined, steps: number): TrainerOptions {
  return {
    config: c, seed: 3, recompute: false, initStd: 0.02, out, logEvery: 1, evalEvery: 0, saveEvery: 0, saveDtype: 'F32',
    optim: { lr: 1e-2, minLr: 1e-3, warmupSteps: 3, totalSteps: steps, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.01, clip: 1, accumulate: 1, zLossCoef: 0 },
  };
}

test('a few AdamW steps lower the loss of a tiny model', (t) => {
  const c = tinyConfig();
  const trainer = Trainer.create(new CpuTrainBackend(), trainerOptions(c, undefined, 40));
  const src = new PatternSource(c.vocabSize);
  const losses: number[] = [];
  trainer.run(src, [], { onRecord: (r) => losses.push(r.loss) });
  const first = losses.slice(0, 3).reduce((a, b) => a + b) / 3, last = losses.slice(-3).reduce((a, b) => a + b) / 3;
  t.diagnostic(`tiny model: loss ${first.toFixed(3)} → ${last.toFixed(3)} in ${losses.length} steps`);
  assert.ok(last < 0.6 * first, `loss went from ${first} to ${last}`);
});

test('checkpoint → resume continues exactly; the inference loader reads the checkpoint and gives the same loss', async (t) => {
  const c = tinyConfig();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lmoe-train-'));
  try {
    // Uninterrupted: 6 steps.
    const a = Trainer.create(new CpuTrainBackend(), trainerOptions(c, undefined, 6));
    const srcA = new PatternSource(c.vocabSize);
    const la: number[] = [];
    a.run(srcA, [], { onRecord: (r) => la.push(r.loss) });
    // Interrupted after 3, saved, resumed for 3 more.
    const b1 = Trainer.create(new CpuTrainBackend(), trainerOptions(c, undefined, 3));
    const srcB = new PatternSource(c.vocabSize);
    const lb: number[] = [];
    b1.run(srcB, [], { onRecord: (r) => lb.push(r.loss) });
    const ck = path.join(dir, 'ck');
    b1.save(ck, srcB);
    const { trainer: b2, state } = await Trainer.resume(new CpuTrainBackend(), trainerOptions(c, undefined, 6), ck);
    assert.equal(b2.step, 3);
    b2.run(PatternSource.from(c.vocabSize, state.data), [], { onRecord: (r) => lb.push(r.loss) });
    assert.deepEqual(lb, la, 'resumed run differs from the uninterrupted one');
    assert.deepEqual(b2.params.read(), a.params.read());

    // The inference engine loads the fp32 checkpoint (original layout) and its logits give the trainer's loss.
    const batch = new PatternSource(c.vocabSize).next();
    const want = b1.model.evaluate(b1.params.model, batch);
    const model = await loadModel(ck, { device: 'cpu' });
    let ce = 0;
    const o = batch.offsets;
    for (let d = 0; d + 1 < o.length; d++) {
      const ids = Array.from(batch.ids.subarray(o[d], o[d + 1]));
      const rows = model.logits(ids);
      for (let i = 0; i + 1 < ids.length; i++) {
        const row = rows[i];
        let mx = -Infinity;
        for (const v of row) mx = Math.max(mx, v);
        let s = 0;
        for (const v of row) s += Math.exp(v - mx);
        ce += mx + Math.log(s) - row[ids[i + 1]];
      }
    }
    model.dispose();
    const rel = Math.abs(ce - want.ceSum) / want.ceSum;
    t.diagnostic(`inference engine (f32) vs trainer (f64) loss on the checkpoint: relative difference ${rel.toExponential(2)}`);
    assert.ok(rel < 1e-5, `inference CE ${ce} vs trainer ${want.ceSum}`);

    // A sharded export (index + shards) loads to the same logits as the single file.
    const sharded = path.join(dir, 'sharded');
    b1.export(sharded, 'F32', { maxShardBytes: 4096 });
    const files = fs.readdirSync(sharded).filter((f) => f.endsWith('.safetensors'));
    assert.ok(files.length >= 2 && fs.existsSync(path.join(sharded, 'model.safetensors.index.json')), files.join(', '));
    const one = await loadModel(ck, { device: 'cpu' }), many = await loadModel(sharded, { device: 'cpu' });
    const ids = Array.from(batch.ids.subarray(0, 10));
    assert.deepEqual(many.logits(ids), one.logits(ids));
    one.dispose();
    many.dispose();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
