/**
 * Fixture parity on the CPU backend (test/fixtures/README.md): logits of every prompt within max-abs 1e-4 of the
 * float64 reference, the embedding and every decoder layer's output (p0.hidden), the lightning states after
 * prompt 0, and the greedy continuation with the prompt prefilled in two chunks (11 + 12) then one token at a time.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { loadModel, type Model } from '../../src/index.js';
import { FIXTURES } from '../helpers/paths.js';
import { assertClose, getF32, getIds, readExpected } from '../helpers/expected.js';
import { argmax } from '../../src/engine/sampling.js';

const TOL = 1e-4;

async function checkFixture(name: string, prompts: number): Promise<void> {
  const model: Model = await loadModel(path.join(FIXTURES, name), { device: 'cpu' });
  const exp = await readExpected(name);
  const c = model.config;
  try {
    for (let i = 0; i < prompts; i++) {
      const ids = getIds(exp, `p${i}.ids`);
      const rows = model.logits(ids);
      const flat = new Float32Array(rows.length * c.vocabSize);
      rows.forEach((r, t) => flat.set(r, t * c.vocabSize));
      assertClose(flat, getF32(exp, `p${i}.logits`), TOL, `${name} p${i} (${ids.length} tokens) logits`);
    }

    // p0: every layer's output and the lightning states
    const p0 = getIds(exp, 'p0.ids');
    const T = p0.length, D = c.hiddenSize;
    const hidden = getF32(exp, 'p0.hidden');
    const s = model.createSession();
    const seen = new Set<number>();
    s.append(p0, {
      logits: 'none',
      trace: (traceName, layer, read) => {
        if (traceName !== 'embed' && traceName !== 'l_out') return;
        const slot = traceName === 'embed' ? 0 : layer + 1;
        const got = read();
        assertClose(got, hidden.subarray(slot * T * D, (slot + 1) * T * D), TOL, `${name} p0.hidden[${slot}]`);
        seen.add(slot);
      },
    });
    assert.equal(seen.size, c.numLayers + 1, 'trace saw the embedding and every layer');
    c.layerTypes.forEach((kind, l) => {
      if (kind === 'lightning') assertClose(s.lightningState(l), getF32(exp, `p0.state.layer${l}`), TOL, `${name} p0.state.layer${l}`);
    });
    s.dispose();

    // greedy generation: prompt in two chunks (11 + 12), then token by token
    const prompt = getIds(exp, 'gen.prompt');
    const want = getIds(exp, 'gen.ids');
    const wantLogits = getF32(exp, 'gen.logits');
    const g = model.createSession();
    g.append(prompt.slice(0, 11), { logits: 'none' });
    let logits = g.append(prompt.slice(11), { logits: 'last' }).row(0);
    const got: number[] = [];
    for (let i = 0; i < want.length; i++) {
      assertClose(logits, wantLogits.subarray(i * c.vocabSize, (i + 1) * c.vocabSize), TOL, `${name} gen.logits[${i}]`);
      const id = argmax(logits);
      got.push(id);
      if (i + 1 < want.length) logits = g.append([id]).row(0);
    }
    assert.deepEqual(got, want, `${name} greedy ids`);
    g.dispose();

    // the library's generate() gives the same ids
    const r = await model.generate(prompt, { maxTokens: want.length, temperature: 0, ignoreEos: true });
    assert.deepEqual(r.ids, want, `${name} generate() ids`);
    assert.equal(r.finishReason, 'length');
  } finally {
    model.dispose();
  }
}

test('tiny (original layout, fp32, sharded): parity with the float64 reference', () => checkFixture('tiny', 5));
test('tiny-bf16 (bf16 weights, fp32 routers): parity', () => checkFixture('tiny-bf16', 5));
test('tiny-hf (transformers layout, packed experts, α/β ≠ 1): parity', () => checkFixture('tiny-hf', 5));
test('small-d128 (head_dim 128, rotary 64, prompts up to 1500 tokens): parity', () => checkFixture('small-d128', 3));
