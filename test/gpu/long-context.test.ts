/**
 * Correctness at length on the GPU (issue 6): a 65,536-token prompt, prefilled in chunks, against the independent
 * float64 reference (test/helpers/reference64.ts) on a small random MiniMax-01 checkpoint with bf16 weights.
 *
 * The model: hidden 64, 4 layers (3 lightning + a final softmax layer), 2 heads × 64 (the tensor-core kernels'
 * head size), 1 kv head, 2 experts top-2, vocab 256. Both experts are always selected, so no router near-tie can
 * flip a pick in bf16 and send the comparison down another path — over 64K tokens a flip would be near-certain and
 * a lightning state carries it to the end; the router weights are still live (the renormalised softmax weights).
 * The reference runs the full recurrence over every token and, in the final softmax layer, attention for the last
 * query only (keys and values over all 65,536 positions), so it stays linear in the length.
 *
 * Bar: max |Δ| / max |reference| of the last-position logits ≤ 2e-2, the bar of the bf16 fixture parity
 * (test/gpu/model.test.ts), and the same top-1 token.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel } from '../../src/index.js';
import { build, type CaseSpec } from '../helpers/random-checkpoint.js';
import { referenceForward } from '../helpers/reference64.js';
import { getGpu, maxRelErr } from '../helpers/gpu.js';
import { top5 } from '../helpers/gpu-parity.js';

const N = 65_536;
const CHUNK = 8192;
const TOL = 2e-2;

const spec: CaseSpec = {
  name: 'long-64k',
  seed: 64,
  dtype: 'BF16',
  promptLength: N,
  split: 0,
  config: {
    model_type: 'minimax_text_01',
    architectures: ['MiniMaxText01ForCausalLM'],
    vocab_size: 256,
    hidden_size: 64,
    num_hidden_layers: 4,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    head_dim: 64,
    rotary_dim: 32,
    rope_theta: 10_000_000,
    intermediate_size: 32,
    num_local_experts: 2,
    num_experts_per_tok: 2,
    rms_norm_eps: 1e-5,
    attn_type_list: [0, 0, 0, 1],
    postnorm: true,
    layernorm_linear_attention_alpha: 8 ** 0.25,
    layernorm_linear_attention_beta: 1,
    layernorm_full_attention_alpha: 8 ** 0.25,
    layernorm_full_attention_beta: 1,
    layernorm_mlp_alpha: 8 ** 0.25,
    layernorm_mlp_beta: 1,
    hidden_act: 'silu',
    max_position_embeddings: 1 << 20,
    tie_word_embeddings: false,
  },
};

const { gpu, reason } = await getGpu();

test(`a ${N}-token prompt's last-position logits on the GPU match the float64 reference (bf16 bar ${TOL})`, { skip: gpu ? false : reason }, async (t) => {
  const b = build(spec, t);
  const t0 = performance.now();
  const ref = referenceForward(b.cfg, b.weights, b.prompt, { lastOnly: true });
  const refMs = performance.now() - t0;
  const want = ref.logits[0];

  const model = await loadModel(b.dir, { device: 'cuda' });
  t.after(() => model.dispose());
  const s = model.createSession();
  const t1 = performance.now();
  for (let i = 0; i + CHUNK < N; i += CHUNK) s.append(b.prompt.slice(i, i + CHUNK), { logits: 'none' });
  const got = s.append(b.prompt.slice(N - (N % CHUNK || CHUNK))).row(0);
  const gpuMs = performance.now() - t1;
  s.dispose();

  const rel = maxRelErr(got, want);
  const [gotTop, wantTop] = [top5(got)[0], top5(want)[0]];
  t.diagnostic(`${N} tokens: max rel err ${rel.toExponential(2)}; top-1 GPU ${gotTop} vs reference ${wantTop}; reference ${(refMs / 1000).toFixed(1)} s, GPU prefill ${(gpuMs / 1000).toFixed(2)} s in chunks of ${CHUNK}`);
  assert.ok(Number.isFinite(rel) && rel <= TOL, `last-position logits: max rel err ${rel} > ${TOL}`);
  assert.equal(gotTop, wantTop, 'top-1 token');
});
