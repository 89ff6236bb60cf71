/**
 * Checkpoint tensor names → weight slots (MODEL.md §12, src/weights/names.ts planWeights): the original per-expert
 * and the packed (transformers v5) MoE layouts, mixed per layer, the `mlp.gate.weight` router name, ignored derived
 * buffers, and one-line errors for missing / unexpected tensors, wrong shapes and integer dtypes; tied embeddings.
 * Then a model-level check: a packed-layout copy of `tiny` (written with test/helpers/safetensors-writer.ts) gives
 * the same logits as the original sharded checkpoint.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseModelConfig, type ModelConfig } from '../../src/config/config.js';
import { loadModel } from '../../src/engine/model.js';
import { WeightsError } from '../../src/util/errors.js';
import { Checkpoint } from '../../src/weights/checkpoint.js';
import { planWeights, type TensorDescription, type WeightSlot } from '../../src/weights/names.js';
import type { StDType } from '../../src/weights/safetensors.js';
import { getIds, maxAbsDiff, readExpected } from '../helpers/expected.js';
import { FIXTURES } from '../helpers/paths.js';
import { writeSafetensors, type WriterTensor } from '../helpers/safetensors-writer.js';

const rawTiny = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'tiny', 'config.json'), 'utf8')) as Record<string, unknown>;
const TINY: ModelConfig = parseModelConfig(rawTiny);
// tiny: D 48, H 4 × Dh 16 = 64, KV 2 × 16 = 32, I 32, E 8, V 1024, layers [lin, lin, soft, lin, lin, soft].
const D = 48, HD = 64, KVD = 32, I = 32, E = 8, V = 1024;

type MoeLayout = 'original' | 'packed';

interface SynthOptions {
  /** MoE layout of each layer (default: all original). */
  moe?: (layer: number) => MoeLayout;
  /** Router tensor name: the original `block_sparse_moe.gate.weight` or the native `mlp.gate.weight`. */
  router?: (layer: number) => 'block_sparse_moe' | 'mlp';
  dtype?: StDType;
  lmHead?: boolean;
}

/** The tensors a checkpoint of `config` holds, written out from MODEL.md §12 (independently of planWeights). */
function synth(config: ModelConfig = TINY, o: SynthOptions = {}): Map<string, TensorDescription> {
  const d = config.hiddenSize, hd = config.numHeads * config.headDim, kvd = config.numKvHeads * config.headDim;
  const e = config.numExperts, i = config.intermediateSize, v = config.vocabSize;
  const dtype = o.dtype ?? 'BF16';
  const m = new Map<string, TensorDescription>();
  const add = (name: string, shape: number[], dt: StDType = dtype): void => {
    m.set(name, { dtype: dt, shape });
  };
  add('model.embed_tokens.weight', [v, d]);
  add('model.norm.weight', [d]);
  if (o.lmHead ?? !config.tieWordEmbeddings) add('lm_head.weight', [v, d]);
  config.layerTypes.forEach((kind, l) => {
    const p = `model.layers.${l}.`;
    add(p + 'input_layernorm.weight', [d]);
    add(p + 'post_attention_layernorm.weight', [d]);
    if (kind === 'lightning') {
      add(p + 'self_attn.qkv_proj.weight', [3 * hd, d]);
      add(p + 'self_attn.output_gate.weight', [hd, d]);
      add(p + 'self_attn.norm.weight', [hd]);
      add(p + 'self_attn.out_proj.weight', [d, hd]);
    } else {
      add(p + 'self_attn.q_proj.weight', [hd, d]);
      add(p + 'self_attn.k_proj.weight', [kvd, d]);
      add(p + 'self_attn.v_proj.weight', [kvd, d]);
      add(p + 'self_attn.o_proj.weight', [d, hd]);
    }
    add(p + `${o.router?.(l) ?? 'block_sparse_moe'}.gate.weight`, [e, d], 'F32');
    if ((o.moe?.(l) ?? 'original') === 'packed') {
      add(p + 'mlp.experts.gate_up_proj', [e, 2 * i, d]);
      add(p + 'mlp.experts.down_proj', [e, d, i]);
    } else {
      for (let x = 0; x < e; x++) {
        add(p + `block_sparse_moe.experts.${x}.w1.weight`, [i, d]);
        add(p + `block_sparse_moe.experts.${x}.w3.weight`, [i, d]);
        add(p + `block_sparse_moe.experts.${x}.w2.weight`, [d, i]);
      }
    }
  });
  return m;
}

function slot(plan: readonly WeightSlot[], key: string): WeightSlot {
  const s = plan.find((x) => x.key === key);
  assert.ok(s, `no slot ${key}`);
  return s;
}

/** Runs planWeights and asserts a one-line WeightsError whose message contains every needle. */
function planFails(tensors: Map<string, TensorDescription>, needles: readonly (string | RegExp)[], config = TINY): WeightsError {
  let caught: unknown;
  try {
    planWeights(config, tensors, 'ckpt');
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof WeightsError, `expected a WeightsError, got ${String(caught)}`);
  assert.doesNotMatch(caught.message, /[\r\n]/, `one line: ${caught.message}`);
  assert.ok(caught.message.startsWith('ckpt: '), `names the checkpoint: ${caught.message}`);
  for (const n of needles) {
    if (typeof n === 'string') assert.ok(caught.message.includes(n), `message should contain ${JSON.stringify(n)}: ${caught.message}`);
    else assert.match(caught.message, n);
  }
  return caught;
}

/** The slot keys every plan of tiny must have. */
function expectedKeys(config: ModelConfig): string[] {
  const keys = ['embed', 'finalNorm'];
  if (!config.tieWordEmbeddings) keys.push('lmHead');
  config.layerTypes.forEach((kind, l) => {
    const attn = kind === 'lightning' ? ['qkv', 'gate', 'norm', 'out'] : ['q', 'k', 'v', 'o'];
    for (const k of ['inputNorm', 'postNorm', ...attn, 'router', 'w13', 'w2']) keys.push(`layers.${l}.${k}`);
  });
  return keys.sort();
}

test('original per-expert layout: every slot planned; w13 = w1_e then w3_e per expert, w2 stacked', () => {
  const plan = planWeights(TINY, synth());
  assert.deepEqual(plan.map((s) => s.key).sort(), expectedKeys(TINY));
  // Every tensor of the checkpoint is used exactly once.
  const used = plan.flatMap((s) => s.sources.map((x) => x.tensor));
  assert.equal(new Set(used).size, used.length);
  assert.equal(used.length, synth().size);

  for (let l = 0; l < TINY.numLayers; l++) {
    const w13 = slot(plan, `layers.${l}.w13`);
    assert.deepEqual(w13.shape, [E, 2 * I, D]);
    assert.equal(w13.keepFp32, false);
    assert.equal(w13.sources.length, 2 * E);
    for (let e = 0; e < E; e++) {
      const w1 = w13.sources.find((s) => s.tensor === `model.layers.${l}.block_sparse_moe.experts.${e}.w1.weight`);
      const w3 = w13.sources.find((s) => s.tensor === `model.layers.${l}.block_sparse_moe.experts.${e}.w3.weight`);
      assert.ok(w1 && w3, `layer ${l} expert ${e}`);
      assert.equal(w1.offset, e * 2 * I * D, `w1_${e} at e·2I·D`);
      assert.equal(w3.offset, e * 2 * I * D + I * D, `w3_${e} at e·2I·D + I·D`);
      assert.deepEqual(w1.shape, [I, D]);
      assert.deepEqual(w3.shape, [I, D]);
    }
    const w2 = slot(plan, `layers.${l}.w2`);
    assert.deepEqual(w2.shape, [E, D, I]);
    assert.equal(w2.sources.length, E);
    for (let e = 0; e < E; e++) {
      const s = w2.sources.find((x) => x.tensor === `model.layers.${l}.block_sparse_moe.experts.${e}.w2.weight`);
      assert.ok(s);
      assert.equal(s.offset, e * D * I, `w2_${e} at e·D·I`);
      assert.deepEqual(s.shape, [D, I]);
    }
    // The sources tile the slot exactly: no gap, no overlap.
    for (const sl of [w13, w2]) {
      const spans = sl.sources.map((s) => [s.offset, s.offset + s.shape.reduce((a, b) => a * b, 1)] as const).sort((a, b) => a[0] - b[0]);
      let at = 0;
      for (const [b, e] of spans) {
        assert.equal(b, at);
        at = e;
      }
      assert.equal(at, sl.shape.reduce((a, b) => a * b, 1));
    }
    const router = slot(plan, `layers.${l}.router`);
    assert.equal(router.keepFp32, true, 'routers stay fp32');
    assert.deepEqual(router.shape, [E, D]);
    assert.equal(router.sources[0].tensor, `model.layers.${l}.block_sparse_moe.gate.weight`);
  }
  assert.deepEqual(slot(plan, 'layers.0.qkv').shape, [3 * HD, D]);
  assert.deepEqual(slot(plan, 'layers.0.out').shape, [D, HD]);
  assert.deepEqual(slot(plan, 'layers.2.k').shape, [KVD, D]);
  assert.deepEqual(slot(plan, 'layers.2.o').shape, [D, HD]);
  assert.deepEqual(slot(plan, 'lmHead').shape, [V, D]);
  assert.equal(slot(plan, 'lmHead').sources[0].tensor, 'lm_head.weight');
});

test('packed layout (mlp.experts.gate_up_proj / down_proj, mlp.gate.weight) plans', () => {
  const plan = planWeights(TINY, synth(TINY, { moe: () => 'packed', router: () => 'mlp' }));
  assert.deepEqual(plan.map((s) => s.key).sort(), expectedKeys(TINY));
  for (let l = 0; l < TINY.numLayers; l++) {
    const w13 = slot(plan, `layers.${l}.w13`);
    assert.deepEqual(w13.sources, [{ tensor: `model.layers.${l}.mlp.experts.gate_up_proj`, offset: 0, shape: [E, 2 * I, D] }]);
    const w2 = slot(plan, `layers.${l}.w2`);
    assert.deepEqual(w2.sources, [{ tensor: `model.layers.${l}.mlp.experts.down_proj`, offset: 0, shape: [E, D, I] }]);
    const router = slot(plan, `layers.${l}.router`);
    assert.equal(router.sources[0].tensor, `model.layers.${l}.mlp.gate.weight`);
    assert.equal(router.keepFp32, true);
  }
});

test('layouts may differ per layer, and the router name independently of the experts', () => {
  const moe = (l: number): MoeLayout => (l % 2 === 0 ? 'packed' : 'original');
  const router = (l: number) => (l < 3 ? 'mlp' : 'block_sparse_moe') as 'mlp' | 'block_sparse_moe';
  const plan = planWeights(TINY, synth(TINY, { moe, router }));
  for (let l = 0; l < TINY.numLayers; l++) {
    const w13 = slot(plan, `layers.${l}.w13`);
    assert.equal(w13.sources.length, moe(l) === 'packed' ? 1 : 2 * E, `layer ${l}`);
    assert.equal(slot(plan, `layers.${l}.router`).sources[0].tensor, `model.layers.${l}.${router(l)}.gate.weight`);
  }
});

test('derived buffers (slope_rate, query/key/diagonal decay, rotary inv_freq) are ignored', () => {
  const t = synth(TINY, { moe: () => 'packed', router: () => 'mlp' });
  for (const b of ['slope_rate', 'query_decay', 'key_decay', 'diagonal_decay', 'rotary_emb.inv_freq']) {
    t.set(`model.layers.0.self_attn.${b}`, { dtype: 'F32', shape: [4, 1, 1] });
    t.set(`model.layers.2.self_attn.${b}`, { dtype: 'F32', shape: [7] });
  }
  const plan = planWeights(TINY, t);
  assert.ok(!plan.some((s) => s.sources.some((x) => /decay|slope|inv_freq/.test(x.tensor))));
  // ...but only under self_attn of a layer: the same names elsewhere are unexpected.
  t.set('model.slope_rate', { dtype: 'F32', shape: [4] });
  planFails(t, ['1 unexpected tensor(s)', 'model.slope_rate']);
});

test('float dtypes F32, BF16, F16 are accepted; integer dtypes are rejected naming the tensor', () => {
  for (const dtype of ['F32', 'BF16', 'F16'] as const) assert.ok(planWeights(TINY, synth(TINY, { dtype })).length > 0, dtype);
  const t = synth();
  t.set('model.norm.weight', { dtype: 'I64', shape: [D] });
  planFails(t, ['model.norm.weight', 'dtype I64']);
  const u = synth();
  u.set('model.layers.3.block_sparse_moe.experts.5.w2.weight', { dtype: 'I8', shape: [D, I] });
  planFails(u, ['model.layers.3.block_sparse_moe.experts.5.w2.weight', 'I8']);
});

test('missing tensors: the error counts and names them', () => {
  const t = synth();
  t.delete('model.layers.4.self_attn.out_proj.weight');
  t.delete('lm_head.weight');
  const e = planFails(t, ['2 tensor(s) missing', 'model.layers.4.self_attn.out_proj.weight', 'lm_head.weight']);
  assert.ok(e.tensor === 'lm_head.weight' || e.tensor === 'model.layers.4.self_attn.out_proj.weight');
  // A packed layer missing one half: the other half alone selects the packed names.
  const p = synth(TINY, { moe: () => 'packed' });
  p.delete('model.layers.1.mlp.experts.down_proj');
  planFails(p, ['1 tensor(s) missing', 'model.layers.1.mlp.experts.down_proj']);
});

test('hundreds missing: one short line with a count and the first names', () => {
  const real = parseModelConfig(JSON.parse(fs.readFileSync(path.join(FIXTURES, 'configs', 'minimax-text-01.config.json'), 'utf8')));
  const e = planFails(new Map(), ['8243 tensor(s) missing', 'model.embed_tokens.weight', 'more)'], real);
  assert.ok(e.message.length < 1000, `bounded: ${e.message.length} chars`);
  // One tensor per layer missing in the real geometry (no weights needed: planWeights reads only descriptions).
  const t = synth(real);
  assert.equal(t.size, 8243, 'MODEL.md §12: 80·103 + 3 tensors');
  assert.equal(planWeights(real, t).length, 3 + 80 * 9, "3 global slots + 9 per layer");
  for (let l = 0; l < 80; l++) t.delete(`model.layers.${l}.post_attention_layernorm.weight`);
  planFails(t, ['80 tensor(s) missing', 'model.layers.0.post_attention_layernorm.weight', '72 more'], real);
});

test('unexpected tensors are named (shared expert, coefficient, stray names)', () => {
  const t = synth();
  t.set('model.layers.0.shared_mlp.gate_proj.weight', { dtype: 'BF16', shape: [64, D] });
  t.set('model.layers.0.coefficient.weight', { dtype: 'BF16', shape: [1, D] });
  const e = planFails(t, ['2 unexpected tensor(s)', 'model.layers.0.shared_mlp.gate_proj.weight', 'model.layers.0.coefficient.weight']);
  assert.equal(e.tensor, 'model.layers.0.shared_mlp.gate_proj.weight');
  // An expert beyond num_local_experts, and a layer beyond num_hidden_layers.
  const u = synth();
  u.set('model.layers.0.block_sparse_moe.experts.8.w1.weight', { dtype: 'BF16', shape: [I, D] });
  u.set('model.layers.6.input_layernorm.weight', { dtype: 'BF16', shape: [D] });
  planFails(u, ['model.layers.0.block_sparse_moe.experts.8.w1.weight', 'model.layers.6.input_layernorm.weight']);
  // Both router names in one layer: the original wins and the other is reported.
  const r = synth();
  r.set('model.layers.1.mlp.gate.weight', { dtype: 'F32', shape: [E, D] });
  planFails(r, ['model.layers.1.mlp.gate.weight']);
  // Both expert layouts in one layer: the packed ones are used and the per-expert tensors are reported.
  const b = synth();
  b.set('model.layers.2.mlp.experts.gate_up_proj', { dtype: 'BF16', shape: [E, 2 * I, D] });
  b.set('model.layers.2.mlp.experts.down_proj', { dtype: 'BF16', shape: [E, D, I] });
  planFails(b, [`${3 * E} unexpected tensor(s)`, 'model.layers.2.block_sparse_moe.experts.0.w1.weight']);
});

test('wrong shapes name the tensor with the expected and the actual shape', () => {
  const cases: [string, number[], string][] = [
    ['model.layers.0.self_attn.qkv_proj.weight', [3 * HD, D + 1], `expected [${3 * HD}, ${D}]`],
    ['model.layers.2.self_attn.k_proj.weight', [HD, D], `expected [${KVD}, ${D}]`],
    ['model.embed_tokens.weight', [V + 1, D], `expected [${V}, ${D}]`],
    ['model.norm.weight', [1, D], `expected [${D}]`],
    ['model.layers.5.block_sparse_moe.experts.7.w2.weight', [I, D], `expected [${D}, ${I}]`],
  ];
  for (const [name, shape, want] of cases) {
    const t = synth();
    t.set(name, { dtype: 'BF16', shape });
    planFails(t, [name, `[${shape.join(', ')}]`, want]);
  }
  const p = synth(TINY, { moe: () => 'packed' });
  p.set('model.layers.3.mlp.experts.gate_up_proj', { dtype: 'BF16', shape: [E, D, 2 * I] });
  planFails(p, ['model.layers.3.mlp.experts.gate_up_proj', `[${E}, ${D}, ${2 * I}]`, `expected [${E}, ${2 * I}, ${D}]`]);
});

test('tied embeddings: no lm_head.weight needed, a stored one ignored (and required when untied)', () => {
  const tied = parseModelConfig({ ...rawTiny, tie_word_embeddings: true });
  const plan = planWeights(tied, synth(tied));
  assert.ok(!plan.some((s) => s.key === 'lmHead'), 'no lm_head slot');
  assert.ok(!synth(tied).has('lm_head.weight'));
  // a tied checkpoint that still stores lm_head.weight: the copy is ignored (the head is the embedding)
  const withHead = synth(tied);
  withHead.set('lm_head.weight', { dtype: 'F32', shape: [tied.vocabSize, tied.hiddenSize] });
  assert.ok(!planWeights(tied, withHead).some((s) => s.key === 'lmHead'));
  const t = synth(TINY);
  t.delete('lm_head.weight');
  planFails(t, ['1 tensor(s) missing', 'lm_head.weight']);
});

// ---------------------------------------------------------------------------------------------------------------
// Model level: a packed copy of tiny computes the same logits
// ---------------------------------------------------------------------------------------------------------------

test('a packed-layout copy of tiny (single file) gives the same logits as the original shards', async (t) => {
  const src = path.join(FIXTURES, 'tiny');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lmoe-packed-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const ckpt = await Checkpoint.open(src);
  const out = new Map<string, WriterTensor>();
  try {
    const experts = /^model\.layers\.\d+\.block_sparse_moe\.experts\./;
    for (const name of [...ckpt.tensors.keys()].sort()) {
      if (experts.test(name)) continue;
      const entry = ckpt.tensors.get(name)!;
      assert.equal(entry.dtype, 'F32');
      const data = await ckpt.readFloat32(name);
      const router = /^(model\.layers\.\d+\.)block_sparse_moe\.gate\.weight$/.exec(name);
      out.set(router ? `${router[1]}mlp.gate.weight` : name, { dtype: 'F32', shape: entry.shape, data });
    }
    for (let l = 0; l < TINY.numLayers; l++) {
      const p = `model.layers.${l}.`;
      const gateUp = new Float32Array(E * 2 * I * D);
      const down = new Float32Array(E * D * I);
      for (let e = 0; e < E; e++) {
        const x = `${p}block_sparse_moe.experts.${e}.`;
        gateUp.set(await ckpt.readFloat32(x + 'w1.weight'), e * 2 * I * D);
        gateUp.set(await ckpt.readFloat32(x + 'w3.weight'), e * 2 * I * D + I * D);
        down.set(await ckpt.readFloat32(x + 'w2.weight'), e * D * I);
      }
      out.set(p + 'mlp.experts.gate_up_proj', { dtype: 'F32', shape: [E, 2 * I, D], data: gateUp });
      out.set(p + 'mlp.experts.down_proj', { dtype: 'F32', shape: [E, D, I], data: down });
    }
  } finally {
    await ckpt.close();
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), out, { format: 'pt' });
  for (const f of ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json']) {
    fs.copyFileSync(path.join(src, f), path.join(dir, f));
  }

  // The copy really is in the packed layout.
  const copy = await Checkpoint.open(dir);
  assert.equal(copy.files.length, 1);
  assert.ok(copy.tensors.has('model.layers.0.mlp.experts.gate_up_proj'));
  assert.ok(copy.tensors.has('model.layers.5.mlp.gate.weight'));
  assert.ok(![...copy.tensors.keys()].some((n) => n.includes('block_sparse_moe')));
  await copy.close();

  const ids = getIds(await readExpected('tiny'), 'p3.ids');
  assert.equal(ids.length, 37);
  const a = await loadModel(src, { device: 'cpu' });
  const b = await loadModel(dir, { device: 'cpu' });
  try {
    const ra = a.logits(ids);
    const rb = b.logits(ids);
    assert.equal(ra.length, 37);
    assert.equal(rb.length, 37);
    let worst = 0;
    for (let r = 0; r < ra.length; r++) {
      assert.equal(rb[r].length, V);
      worst = Math.max(worst, maxAbsDiff(ra[r], rb[r]));
    }
    assert.ok(worst <= 1e-6, `max |Δ logit| = ${worst}`);
    // Not vacuous: the logits are not all equal.
    assert.notEqual(Math.max(...ra[36]), Math.min(...ra[36]));
  } finally {
    a.dispose();
    b.dispose();
  }
});
