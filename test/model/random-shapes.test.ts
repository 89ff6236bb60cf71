/**
 * The engine against the independent float64 reference (test/helpers/reference64.ts) on randomly generated
 * MiniMax-01 checkpoints of shapes that are not in the fixtures: non-power-of-two head counts, hidden ≠ H·d,
 * GQA groups of 1–3, whole-head and partial RoPE, a single layer, tied embeddings, head_dim and num_key_value_heads
 * absent, both config layouts, original and packed expert names, F32/BF16/F16 weights (fp32 routers), a sharded
 * checkpoint, and a 600-token prompt over several 256-token lightning blocks. Each case checks logits at every
 * position (max-abs 1e-4), a chunked prefill with the lightning states, and the greedy continuation; one case also
 * goes through the CLI (`lmoe logits`, `lmoe generate --json`).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadModel } from '../../src/index.js';
import { FIXTURES, REPO_ROOT } from '../helpers/paths.js';
import { maxAbsDiff } from '../helpers/expected.js';
import { referenceForward, referenceGreedy, type GreedyStep } from '../helpers/reference64.js';
import { build, Rand, type Built, type CaseSpec, type DType } from '../helpers/random-checkpoint.js';

const TOL = 1e-4;
const GEN_TOKENS = 12;
/** A reference greedy step whose top-1 gap is below this is too close to call for a float32 engine. */
const MIN_GAP = 1e-3;

// ---------------------------------------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------------------------------------

function maxAbsRows(got: readonly ArrayLike<number>[], want: readonly ArrayLike<number>[]): number {
  assert.equal(got.length, want.length, `rows: ${got.length} vs ${want.length}`);
  return got.reduce((m, r, i) => Math.max(m, maxAbsDiff(r, want[i])), 0);
}

/** The greedy ids that must agree: up to (not including) the first step whose reference top-1 gap is below MIN_GAP. */
function comparable(steps: readonly GreedyStep[]): { ids: number[]; note: string } {
  const cut = steps.findIndex((s) => s.gap < MIN_GAP);
  if (cut < 0) return { ids: steps.map((s) => s.id), note: '' };
  return { ids: steps.slice(0, cut).map((s) => s.id), note: `(reference top-1 gap ${steps[cut].gap.toExponential(2)} at step ${cut}: compared ${cut} tokens)` };
}

/** Max |Δlogit| per case, printed at the end for the record. */
const measured: string[] = [];

async function checkCase(spec: CaseSpec, t: TestContext): Promise<Built & { steps: GreedyStep[] }> {
  const b = build(spec, t);
  const { cfg, weights, prompt } = b;
  const ref = referenceForward(cfg, weights, prompt);
  const gapNote = `min router-logit gap ${ref.stats.minRouterGap.toExponential(2)}`;
  const model = await loadModel(b.dir, { device: 'cpu' });
  try {
    // every position from an empty cache
    const rows = model.logits(prompt);
    const err = maxAbsRows(rows, ref.logits);
    measured.push(`${spec.name}: max |Δlogit| = ${err.toExponential(2)} over ${prompt.length} positions`);
    const big = ref.logits.reduce((m, r) => r.reduce((a, x) => Math.max(a, Math.abs(x)), m), 0);
    t.diagnostic(`max |Δlogit| = ${err.toExponential(3)} (${prompt.length} tokens, max |logit| ${big.toFixed(1)}, ${gapNote})`);
    assert.ok(err <= TOL, `${spec.name}: logits max |Δ| = ${err} > ${TOL} (${gapNote})`);

    // chunked prefill, then the lightning states after the prompt
    const s = model.createSession();
    try {
      if (spec.split > 0) s.append(prompt.slice(0, spec.split), { logits: 'none' });
      const r = s.append(prompt.slice(spec.split), { logits: 'all' });
      const chunked = Array.from({ length: r.rows }, (_, i) => r.row(i));
      const errChunk = maxAbsRows(chunked, ref.logits.slice(spec.split));
      assert.ok(errChunk <= TOL, `${spec.name}: chunked prefill (${spec.split} + ${prompt.length - spec.split}) logits max |Δ| = ${errChunk} > ${TOL}`);
      for (const [l, want] of ref.states) {
        const scale = Math.max(1, want.reduce((m, x) => Math.max(m, Math.abs(x)), 0));
        const e = maxAbsDiff(s.lightningState(l), want);
        assert.ok(e <= TOL * scale, `${spec.name}: lightning state of layer ${l}: max |Δ| = ${e} > ${TOL} × ${scale}`);
      }
    } finally {
      s.dispose();
    }

    // greedy generation
    const n = spec.genTokens ?? GEN_TOKENS;
    const steps = referenceGreedy(cfg, weights, prompt, n);
    const want = comparable(steps);
    if (want.note) t.diagnostic(want.note);
    const g = await model.generate(prompt, { maxTokens: n, temperature: 0, ignoreEos: true });
    assert.equal(g.ids.length, n, `${spec.name}: generated ${g.ids.length} tokens`);
    assert.deepEqual(g.ids.slice(0, want.ids.length), want.ids, `${spec.name}: greedy ids ${want.note}`);
    return { ...b, steps };
  } finally {
    model.dispose();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------------------------

const CLI = path.join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');

test('H = 6 (non-power-of-two), KV 3, d 8, rotary 4, hidden 40, softmax at 1 and 4, top-1 of 4, rms_norm_eps 1e-3, original layout, F32 (+ CLI)', async (t) => {
  const L = 5;
  const alpha = Math.pow(2 * L, 0.25);
  const spec: CaseSpec = {
    name: 'H6-original-f32',
    seed: 101,
    dtype: 'F32',
    promptLength: 37,
    split: 13,
    config: {
      architectures: ['MiniMaxText01ForCausalLM'],
      model_type: 'minimax_text_01',
      vocab_size: 1024,
      hidden_size: 40,
      num_hidden_layers: L,
      num_attention_heads: 6,
      num_key_value_heads: 3,
      head_dim: 8,
      rotary_dim: 4,
      rope_theta: 10000.0,
      intermediate_size: 24,
      num_local_experts: 4,
      num_experts_per_tok: 1,
      rms_norm_eps: 1e-3,
      attn_type_list: [0, 1, 0, 0, 1],
      layernorm_linear_attention_alpha: alpha,
      layernorm_linear_attention_beta: 1.0,
      layernorm_full_attention_alpha: alpha,
      layernorm_full_attention_beta: 1.0,
      layernorm_mlp_alpha: alpha,
      layernorm_mlp_beta: 1.0,
      postnorm: true,
      hidden_act: 'silu',
      shared_intermediate_size: 0,
      tie_word_embeddings: false,
      max_position_embeddings: 4096,
      torch_dtype: 'float32',
    },
  };
  const b = await checkCase(spec, t);

  // The CLI contract: `lmoe logits` prints {"logits": number[][]}, `lmoe generate --json` prints {"ids", "text"}.
  const ids = b.prompt.slice(0, 9);
  const ref = referenceForward(b.cfg, b.weights, ids).logits;
  const lr = spawnSync(process.execPath, [CLI, 'logits', '--model', b.dir, '--ids', ids.join(',')], { encoding: 'utf8', maxBuffer: 1 << 26 });
  assert.equal(lr.status, 0, `lmoe logits failed: ${lr.stderr}`);
  const parsed = JSON.parse(lr.stdout) as { logits: number[][] };
  const errCli = maxAbsRows(parsed.logits, ref);
  t.diagnostic(`CLI logits max |Δlogit| = ${errCli.toExponential(3)}`);
  measured.push(`${spec.name} via CLI: max |Δlogit| = ${errCli.toExponential(2)} over ${ids.length} positions`);
  assert.ok(errCli <= TOL, `CLI logits max |Δ| = ${errCli} > ${TOL}`);

  const gr = spawnSync(process.execPath, [CLI, 'generate', '--model', b.dir, '--ids', b.prompt.join(','), '--max-tokens', String(GEN_TOKENS), '--temperature', '0', '--ignore-eos', '--json'], { encoding: 'utf8' });
  assert.equal(gr.status, 0, `lmoe generate failed: ${gr.stderr}`);
  const gen = JSON.parse(gr.stdout) as { ids: number[]; text: string };
  const want = comparable(b.steps);
  assert.equal(gen.ids.length, GEN_TOKENS);
  assert.equal(typeof gen.text, 'string');
  assert.deepEqual(gen.ids.slice(0, want.ids.length), want.ids, `CLI greedy ids ${want.note}`);
});

test('H = 3, KV 1, d 12, whole-head RoPE (no rotary key), α/β all different, [lightning, softmax, lightning], all 3 experts (`num_experts` alias), native layout, BF16', async (t) => {
  await checkCase(
    {
      name: 'H3-native-bf16',
      seed: 202,
      dtype: 'BF16',
      promptLength: 70,
      split: 31,
      config: {
        architectures: ['MiniMaxForCausalLM'],
        model_type: 'minimax',
        vocab_size: 1100,
        hidden_size: 30,
        num_hidden_layers: 3,
        num_attention_heads: 3,
        num_key_value_heads: 1,
        head_dim: 12,
        intermediate_size: 20,
        num_experts: 3,
        num_experts_per_tok: 3,
        rms_norm_eps: 1e-5,
        layer_types: ['linear_attention', 'full_attention', 'linear_attention'],
        block_size: 256,
        rope_parameters: { rope_theta: 1000000.0, rope_type: 'default' },
        linear_attn_alpha_factor: 1.7,
        linear_attn_beta_factor: 0.8,
        full_attn_alpha_factor: 2.3,
        full_attn_beta_factor: 1.2,
        mlp_alpha_factor: 1.4,
        mlp_beta_factor: 0.6,
        hidden_act: 'silu',
        tie_word_embeddings: false,
        max_position_embeddings: 131072,
        dtype: 'bfloat16',
      },
    },
    t,
  );
});

test('one lightning layer (L = 1), H = 2, d 16, 2 of 2 experts, tied embeddings, F16, vocab 300 (no tokenizer)', async (t) => {
  await checkCase(
    {
      name: 'L1-tied-f16',
      seed: 303,
      dtype: 'F16',
      promptLength: 23,
      split: 5,
      config: {
        architectures: ['MiniMaxText01ForCausalLM'],
        model_type: 'minimax_text_01',
        vocab_size: 300,
        hidden_size: 24,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 2,
        head_dim: 16,
        rotary_dim: 16,
        rope_theta: 10000.0,
        intermediate_size: 16,
        num_local_experts: 2,
        num_experts_per_tok: 2,
        rms_norm_eps: 1e-5,
        attn_type_list: [0],
        layernorm_linear_attention_alpha: Math.pow(2, 0.25),
        layernorm_linear_attention_beta: 1.0,
        layernorm_full_attention_alpha: Math.pow(2, 0.25),
        layernorm_full_attention_beta: 1.0,
        layernorm_mlp_alpha: Math.pow(2, 0.25),
        layernorm_mlp_beta: 1.0,
        postnorm: true,
        hidden_act: 'silu',
        tie_word_embeddings: true,
        torch_dtype: 'float16',
      },
    },
    t,
  );
});

test('head_dim and num_key_value_heads absent (64 / 8 heads), 4 softmax layers, partial_rotary_factor 0.5, native layout, packed experts, F32, 3 shards', async (t) => {
  await checkCase(
    {
      name: 'nohd-native-sharded',
      seed: 404,
      dtype: 'F32',
      packed: true,
      shards: 3,
      promptLength: 50,
      split: 17,
      config: {
        architectures: ['MiniMaxForCausalLM'],
        model_type: 'minimax',
        vocab_size: 1024,
        hidden_size: 64,
        num_hidden_layers: 4,
        num_attention_heads: 8,
        intermediate_size: 16,
        num_local_experts: 5,
        num_experts_per_tok: 2,
        rms_norm_eps: 1e-5,
        layer_types: ['full_attention', 'full_attention', 'full_attention', 'full_attention'],
        block_size: 256,
        rope_parameters: { rope_theta: 10000.0, rope_type: 'default', partial_rotary_factor: 0.5 },
        linear_attn_alpha_factor: 1.5,
        linear_attn_beta_factor: 1.0,
        full_attn_alpha_factor: 1.9,
        full_attn_beta_factor: 0.7,
        mlp_alpha_factor: 1.6,
        mlp_beta_factor: 1.1,
        hidden_act: 'silu',
        tie_word_embeddings: false,
        max_position_embeddings: 131072,
        dtype: 'float32',
      },
    },
    t,
  );
});

test('600-token prompt over several 256-token lightning blocks, [lightning, softmax], H = 2, d 8', async (t) => {
  await checkCase(
    {
      name: 'long-600',
      seed: 505,
      dtype: 'F32',
      promptLength: 600,
      split: 300,
      config: {
        architectures: ['MiniMaxText01ForCausalLM'],
        model_type: 'minimax_text_01',
        vocab_size: 256,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        head_dim: 8,
        rotary_dim: 8,
        rope_theta: 10000.0,
        intermediate_size: 16,
        num_local_experts: 3,
        num_experts_per_tok: 2,
        rms_norm_eps: 1e-5,
        attn_type_list: [0, 1],
        layernorm_linear_attention_alpha: 2.0,
        layernorm_linear_attention_beta: 1.0,
        layernorm_full_attention_alpha: 2.0,
        layernorm_full_attention_beta: 1.0,
        layernorm_mlp_alpha: 2.0,
        layernorm_mlp_beta: 1.0,
        postnorm: true,
        hidden_act: 'silu',
        tie_word_embeddings: false,
        torch_dtype: 'float32',
      },
    },
    t,
  );
});

/** A random configuration: any H in 1..7 with a random divisor as KV, even head dims, any hidden size, 1–4 layers of
 * random types, 1–5 experts with any top-k, either layout and any storage dtype, prompts of 1–40 tokens. */
function randomSpec(index: number): CaseSpec {
  const r = new Rand(0x5eed0000 + index * 7919);
  const pick = <T>(xs: readonly T[]): T => xs[r.int(xs.length)];
  const unit = (lo: number, hi: number): number => Math.round((lo + (hi - lo) * r.next()) * 1000) / 1000;
  const H = 1 + r.int(7);
  const KV = pick(Array.from({ length: H }, (_, i) => i + 1).filter((k) => H % k === 0));
  const d = pick([2, 4, 6, 8, 10, 12, 16]);
  const rot = 2 * (1 + r.int(d / 2));
  const omitHeadDim = r.next() < 0.3;
  const D = omitHeadDim ? H * d : 4 + r.int(45);
  const L = 1 + r.int(4);
  const types = Array.from({ length: L }, () => (r.next() < 0.6 ? 0 : 1));
  const E = 1 + r.int(5);
  const K = 1 + r.int(E);
  const V = 64 + r.int(400);
  const native = r.next() < 0.5;
  const dtype = pick(['F32', 'BF16', 'F16'] as const);
  const T = 1 + r.int(40);
  const c: Record<string, unknown> = {
    vocab_size: V,
    hidden_size: D,
    num_hidden_layers: L,
    num_attention_heads: H,
    intermediate_size: 4 + r.int(21),
    num_local_experts: E,
    num_experts_per_tok: K,
    rms_norm_eps: 1e-5,
    hidden_act: 'silu',
    tie_word_embeddings: r.next() < 0.3,
  };
  if (!omitHeadDim) c.head_dim = d;
  if (KV !== H || r.next() < 0.5) c.num_key_value_heads = KV;
  const theta = pick([10000, 1e6, 1e7]);
  const [a1, b1, a2, b2, a3, b3] = Array.from({ length: 6 }, () => unit(0.5, 3));
  // rotary: an explicit rotary_dim, a partial_rotary_factor that gives an exact even r, or nothing (whole head)
  const mode = pick(['rotary_dim', 'factor', 'absent'] as const);
  const factor = rot / d;
  const useFactor = mode === 'factor' && factor * d === rot;
  if (native) {
    Object.assign(c, {
      architectures: ['MiniMaxForCausalLM'],
      model_type: 'minimax',
      layer_types: types.map((x) => (x === 0 ? 'linear_attention' : 'full_attention')),
      block_size: 256,
      rope_parameters: { rope_theta: theta, rope_type: 'default', ...(useFactor ? { partial_rotary_factor: factor } : {}) },
      linear_attn_alpha_factor: a1, linear_attn_beta_factor: b1,
      full_attn_alpha_factor: a2, full_attn_beta_factor: b2,
      mlp_alpha_factor: a3, mlp_beta_factor: b3,
    });
  } else {
    Object.assign(c, {
      architectures: ['MiniMaxText01ForCausalLM'],
      model_type: 'minimax_text_01',
      attn_type_list: types,
      rope_theta: theta,
      ...(useFactor ? { partial_rotary_factor: factor } : {}),
      layernorm_linear_attention_alpha: a1, layernorm_linear_attention_beta: b1,
      layernorm_full_attention_alpha: a2, layernorm_full_attention_beta: b2,
      layernorm_mlp_alpha: a3, layernorm_mlp_beta: b3,
      postnorm: true,
    });
  }
  if (mode === 'rotary_dim') c.rotary_dim = rot;
  return {
    name: `sweep-${index}`,
    seed: 9000 + index,
    dtype,
    packed: native && r.next() < 0.5,
    shards: 1 + r.int(2),
    promptLength: T,
    split: r.int(T),
    genTokens: 6,
    config: c,
  };
}

/** More seeds on demand: LMOE_RANDOM_SWEEP=200 node --test dist/test/model/random-shapes.test.js */
const SWEEP = Number(process.env.LMOE_RANDOM_SWEEP ?? 8);
for (let i = 0; i < SWEEP; i++) {
  const spec = randomSpec(i);
  const c = spec.config;
  const label = `H ${String(c.num_attention_heads)}, KV ${String(c.num_key_value_heads ?? '-')}, head_dim ${String(c.head_dim ?? '-')}, ` +
    `hidden ${String(c.hidden_size)}, ${String(c.num_hidden_layers)} layers, ${String(c.num_experts_per_tok)} of ${String(c.num_local_experts)} experts, ` +
    `${c.layer_types ? 'native' : 'original'}${spec.packed ? ' packed' : ''}, ${spec.dtype}, ${spec.promptLength} tokens`;
  test(`random sweep ${i}: ${label}`, async (t) => {
    try {
      await checkCase(spec, t);
    } catch (e) {
      if (e instanceof Error) e.message += `\nconfig: ${JSON.stringify(spec.config)}`;
      throw e;
    }
  });
}

test('summary of measured errors', (t) => {
  for (const m of measured) t.diagnostic(m);
});
