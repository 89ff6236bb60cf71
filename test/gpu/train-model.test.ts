/**
 * The whole training step on the GPU against the float64 CPU reference: same initial weights and packed batch
 * (several documents of uneven length, both layer kinds, GQA, MoE top-2), loss and every parameter's gradient
 * compared as ‖gpu − cpu‖ / ‖cpu‖ (bf16 GEMMs: within 5e-2). Then a few AdamW steps on each backend follow the
 * same loss curve. Skips without a GPU.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseModelConfig } from '../../src/config/config.js';
import type { CudaBackend } from '../../src/backend/cuda/cuda-backend.js';
import type { TrainBackend } from '../../src/train/backend.js';
import { CpuTrainBackend } from '../../src/train/cpu/cpu-train-backend.js';
import { countTargets, TrainModel, type TrainBatch } from '../../src/train/model.js';
import { randomBatch } from '../helpers/train-batch.js';
import { initialValues, ParamSet, paramSpecs } from '../../src/train/params.js';
import { Trainer, type BatchSource } from '../../src/train/trainer.js';
import { getGpu } from '../helpers/gpu.js';

const { gpu, reason } = await getGpu();
const skip = gpu ? false : reason;
let cuda: TrainBackend | undefined;
if (gpu) {
  const { CudaTrainBackend } = await import('../../src/train/cuda/cuda-train-backend.js');
  cuda = new CudaTrainBackend(gpu.backend as unknown as CudaBackend);
}

const config = parseModelConfig({
  model_type: 'minimax_text_01', postnorm: true,
  vocab_size: 96, hidden_size: 64, num_hidden_layers: 2, attn_type_list: [0, 1], num_attention_heads: 2, num_key_value_heads: 1,
  head_dim: 32, rotary_dim: 16, intermediate_size: 32, num_local_experts: 4, num_experts_per_tok: 2, rope_theta: 10000,
  layernorm_linear_attention_alpha: 1.5, layernorm_full_attention_alpha: 1.5, layernorm_mlp_alpha: 1.5, router_aux_loss_coef: 0.05,
});

function gradients(b: TrainBackend, x: TrainBatch): { loss: number; grads: Float64Array[] } {
  const specs = paramSpecs(config, 0.05);
  const params = new ParamSet(b, config, specs, initialValues(specs, 4));
  const grads = new ParamSet(b, config, specs);
  const m = new TrainModel(b, config, { zLossCoef: 0.01 });
  const n = countTargets(x);
  const r = m.step(params.model, grads.model, x, 1 / n, 1);
  const out = { loss: r.ceSum / n + r.aux + r.z, grads: grads.read() };
  params.free();
  grads.free();
  return out;
}

test('training step: GPU loss and gradients match the float64 CPU reference', { skip }, (t) => {
  const x = randomBatch([70, 1, 33, 130, 17], config.vocabSize, 12);
  const c = gradients(new CpuTrainBackend(), x);
  const g = gradients(cuda!, x);
  const specs = paramSpecs(config);
  assert.ok(Math.abs(g.loss - c.loss) / c.loss < 1e-2, `loss ${g.loss} vs ${c.loss}`);
  let worst = 0, worstKey = '';
  specs.forEach((s, i) => {
    let num = 0, den = 0;
    for (let j = 0; j < c.grads[i].length; j++) {
      num += (g.grads[i][j] - c.grads[i][j]) ** 2;
      den += c.grads[i][j] ** 2;
    }
    const e = Math.sqrt(num / Math.max(den, 1e-30));
    if (e > worst) [worst, worstKey] = [e, s.key];
    assert.ok(e < 5e-2, `${s.key}: gradient relative error ${e.toExponential(2)}`);
  });
  t.diagnostic(`loss ${g.loss.toFixed(6)} vs ${c.loss.toFixed(6)}; worst gradient relative error ${worst.toExponential(2)} (${worstKey})`);
});

class Repeat implements BatchSource {
  private i = 0;
  next(): TrainBatch {
    return randomBatch([40, 24, 60], config.vocabSize, 100 + (this.i++ % 3));
  }
  state(): unknown {
    return { i: this.i };
  }
}

test('training: 25 AdamW steps on the GPU follow the CPU loss curve', { skip }, (t) => {
  const run = (b: TrainBackend): number[] => {
    const tr = Trainer.create(b, {
      config, seed: 5, recompute: false, initStd: 0.05, logEvery: 1, evalEvery: 0, saveEvery: 0, saveDtype: 'F32',
      optim: { lr: 5e-3, minLr: 5e-4, warmupSteps: 3, totalSteps: 25, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, clip: 1, accumulate: 1, zLossCoef: 0 },
    });
    const losses: number[] = [];
    tr.run(new Repeat(), [], { onRecord: (r) => losses.push(r.loss) });
    tr.params.free();
    tr.grads.free();
    tr.optimizer.free();
    return losses;
  };
  const c = run(new CpuTrainBackend());
  const g = run(cuda!);
  t.diagnostic(`loss CPU ${c[0].toFixed(3)} → ${c[24].toFixed(3)}, GPU ${g[0].toFixed(3)} → ${g[24].toFixed(3)}`);
  assert.ok(g[24] < 0.8 * g[0], 'GPU loss went down');
  for (let i = 0; i < 25; i++) assert.ok(Math.abs(g[i] - c[i]) < 0.05 * c[i] + 0.02, `step ${i + 1}: GPU ${g[i]} vs CPU ${c[i]}`);
});
