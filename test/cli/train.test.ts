/**
 * `lmoe train` end to end on the CPU: a BPE tokenizer trained on a small generated corpus, a tiny model trained for
 * a few steps from a config file (the loss goes down, log.jsonl and the checkpoint are written), `lmoe generate`
 * loading the checkpoint unchanged, resume extending the run, and config errors naming the file and field.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT } from '../helpers/paths.js';
import { trainBpe, writeTokenizer } from '../../src/train/bpe.js';

const CLI = path.join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');

function lmoe(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', maxBuffer: 64 << 20 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Sentences from a tiny grammar: enough structure for a few steps to learn something. */
function corpus(): string[] {
  const who = ['the cat', 'a dog', 'the old man', 'my sister', 'the sailor'];
  const did = ['saw', 'liked', 'found', 'followed', 'painted'];
  const what = ['the sea', 'a red boat', 'the moon', 'an apple', 'the whale'];
  const docs: string[] = [];
  let k = 0;
  for (let d = 0; d < 40; d++) {
    const s: string[] = [];
    for (let i = 0; i < 6; i++, k++) s.push(`${who[k % 5]} ${did[(k * 3) % 5]} ${what[(k * 7) % 5]}.`);
    docs.push(s.join(' '));
  }
  return docs;
}

function setup(): { dir: string; config: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lmoe-cli-train-'));
  const docs = corpus();
  fs.writeFileSync(path.join(dir, 'corpus.jsonl'), docs.map((text) => JSON.stringify({ text })).join('\n') + '\n');
  return { dir, config: path.join(dir, 'train.json') };
}

test('lmoe train: a tiny model trains on the CPU, writes its log and a checkpoint lmoe generate loads, and resumes', async () => {
  const { dir, config } = setup();
  try {
    const bpe = trainBpe(corpus(), { vocabSize: 320 });
    await writeTokenizer(path.join(dir, 'tok'), bpe);
    fs.writeFileSync(config, JSON.stringify({
      model: {
        vocab_size: 320, hidden_size: 32, num_hidden_layers: 2, attn_type_list: [0, 1], num_attention_heads: 2, num_key_value_heads: 1,
        head_dim: 16, rotary_dim: 8, num_local_experts: 4, num_experts_per_tok: 2, intermediate_size: 16, eos_token_id: 0,
      },
      tokenizer: 'tok',
      data: { train: ['corpus.jsonl'], valFraction: 0.1, maxSeqLen: 64, tokensPerBatch: 256 },
      optim: { lr: 1e-2, warmupSteps: 5, steps: 30 },
      run: { out: 'out', device: 'cpu', seed: 2, logEvery: 1, evalEvery: 10, saveEvery: 20 },
    }));
    const r = lmoe(['train', '--config', config]);
    assert.equal(r.status, 0, r.stderr);
    const log = fs.readFileSync(path.join(dir, 'out', 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number; loss: number; valLoss?: number });
    assert.equal(log.length, 30);
    assert.deepEqual(log.map((x) => x.step), Array.from({ length: 30 }, (_, i) => i + 1));
    assert.ok(log[29].loss < 0.7 * log[0].loss, `loss ${log[0].loss} → ${log[29].loss}`);
    assert.ok(log.filter((x) => x.valLoss !== undefined).length === 3, 'validation at steps 10, 20, 30');
    for (const d of ['checkpoint-20', 'final']) {
      for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'optimizer.safetensors', 'trainer_state.json']) {
        assert.ok(fs.existsSync(path.join(dir, 'out', d, f)), `${d}/${f}`);
      }
    }
    const g = lmoe(['generate', '--model', path.join(dir, 'out', 'final'), '--device', 'cpu', '--prompt', 'the cat', '--max-tokens', '8', '--json']);
    assert.equal(g.status, 0, g.stderr);
    const out = JSON.parse(g.stdout) as { ids: number[]; text: string };
    assert.ok(out.ids.length > 0 && typeof out.text === 'string');

    // Resume: 10 more steps on a longer schedule continue from step 30.
    const r2 = lmoe(['train', '--config', config, '--resume', '--steps', '40', '--quiet']);
    assert.equal(r2.status, 0, r2.stderr);
    const log2 = fs.readFileSync(path.join(dir, 'out', 'log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { step: number });
    assert.deepEqual(log2.slice(30).map((x) => x.step), Array.from({ length: 10 }, (_, i) => i + 31));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('lmoe train: bad configs give one line naming the file and field', () => {
  const { dir, config } = setup();
  try {
    fs.writeFileSync(config, JSON.stringify({ model: { hidden_size: 8 }, tokenizer: 'x', data: { train: ['c'] }, optim: { steps: 0 }, run: { out: 'o' } }));
    const r = lmoe(['train', '--config', config]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^lmoe: error: .*train\.json: "optim\.steps": /);
    assert.equal(r.stderr.trim().split('\n').length, 1);
    const missing = lmoe(['train', '--config', path.join(dir, 'nope.json')]);
    assert.match(missing.stderr, /nope\.json: file not found/);
    const usage = lmoe(['train']);
    assert.equal(usage.status, 2);
    assert.match(usage.stderr, /--config FILE is required/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the embedded minimax-tiny model: ≤ 25 MB, and lmoe generate uses it when no --model is given', () => {
  const dir = path.join(REPO_ROOT, 'models', 'minimax-tiny');
  const bytes = fs.readdirSync(dir).reduce((a, f) => a + fs.statSync(path.join(dir, f)).size, 0);
  assert.ok(bytes <= 25 * 1024 * 1024, `models/minimax-tiny is ${bytes} bytes`);
  const r = lmoe(['generate', '--device', 'cpu', '--prompt', 'Call me Ishmael.', '--max-tokens', '12', '--temperature', '0', '--json']);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { ids: number[]; text: string };
  assert.equal(out.ids.length, 12);
  // Trained on English prose: greedy text is mostly letters and spaces, not byte soup.
  const letters = out.text.replace(/[^A-Za-z ]/g, '').length;
  assert.ok(letters >= 0.8 * out.text.length && out.text.trim().length > 10, JSON.stringify(out.text));
});
