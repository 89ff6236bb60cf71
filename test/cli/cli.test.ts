/**
 * The `lmoe` CLI as external checks use it: `logits --ids` prints {"logits": number[][]} matching the fixture
 * references, `generate --ids ... --temperature 0 --ignore-eos --json` prints {"ids", "text"} equal to the greedy
 * reference, `inspect` reports the real 456B totals for all three configuration layouts, every command has --help,
 * and `chat` works over a pipe.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { FIXTURES, REPO_ROOT } from '../helpers/paths.js';
import { assertClose, getF32, getIds, readExpected } from '../helpers/expected.js';
import { Tokenizer } from '../../src/tokenizer/index.js';

const CLI = path.join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');

function lmoe(args: string[], input?: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { input, encoding: 'utf8', maxBuffer: 256 << 20 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

for (const name of ['tiny', 'tiny-bf16', 'tiny-hf']) {
  test(`logits --ids: ${name} rows match the reference (max-abs 1e-4)`, async () => {
    const exp = await readExpected(name);
    const ids = getIds(exp, 'p2.ids');
    const r = lmoe(['logits', '--model', path.join(FIXTURES, name), '--ids', ids.join(',')]);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { logits: number[][] };
    assert.deepEqual(Object.keys(out), ['logits']);
    assert.equal(out.logits.length, ids.length, 'one row per input position');
    assertClose(out.logits.flat(), getF32(exp, 'p2.logits'), 1e-4, `${name} CLI logits`);
  });

  test(`generate --json: ${name} greedy ids equal gen.ids`, async () => {
    const exp = await readExpected(name);
    const prompt = getIds(exp, 'gen.prompt');
    const want = getIds(exp, 'gen.ids');
    const dir = path.join(FIXTURES, name);
    const r = lmoe(['generate', '--model', dir, '--ids', prompt.join(','), '--max-tokens', String(want.length), '--temperature', '0', '--ignore-eos', '--json']);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { ids: number[]; text: string };
    assert.deepEqual(Object.keys(out).sort(), ['ids', 'text']);
    assert.deepEqual(out.ids, want);
    const tok = await Tokenizer.fromDir(dir);
    assert.equal(out.text, tok.decode(want, { skipSpecialTokens: true }));
  });
}

test('generate --prompt streams the same text as --json', () => {
  const dir = path.join(FIXTURES, 'tiny');
  const args = ['generate', '--model', dir, '--prompt', 'The registry is', '--max-tokens', '12', '--temperature', '0', '--ignore-eos'];
  const streamed = lmoe(args);
  const json = lmoe([...args, '--json']);
  assert.equal(streamed.status, 0, streamed.stderr);
  assert.equal(json.status, 0, json.stderr);
  assert.equal(streamed.stdout, (JSON.parse(json.stdout) as { text: string }).text + '\n');
});

test('generate with a seed is reproducible', () => {
  const args = ['generate', '--model', path.join(FIXTURES, 'tiny'), '--ids', '1,2,3', '--max-tokens', '16', '--temperature', '1', '--seed', '1234', '--json'];
  const a = lmoe(args), b = lmoe(args);
  assert.equal(a.status, 0, a.stderr);
  assert.equal(a.stdout, b.stdout);
});

for (const file of ['minimax-text-01.config.json', 'minimax-m1.config.json', 'minimax-text-01-hf.config.json']) {
  test(`inspect --config ${file}: 456,089,655,296 parameters, 912,210,767,872 bytes in bf16`, () => {
    const cfg = path.join(FIXTURES, 'configs', file);
    const r = lmoe(['inspect', '--config', cfg]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /parameters\s+456,089,655,296/);
    assert.match(r.stdout, /checkpoint size\s+912,210,767,872 bytes in bf16/);
    assert.match(r.stdout, /80: 70 lightning \+ 10 softmax/);
    const j = lmoe(['inspect', '--model', cfg, '--json']);
    assert.equal(j.status, 0, j.stderr);
    const report = JSON.parse(j.stdout) as { parameters: { total: number }; weightBytes: { bf16: number }; config: { rotaryDim: number } };
    assert.equal(report.parameters.total, 456_089_655_296);
    assert.equal(report.weightBytes.bf16, 912_210_767_872);
    assert.equal(report.config.rotaryDim, 64);
  });
}

test('inspect --model DIR also summarises the shards', () => {
  const r = lmoe(['inspect', '--model', path.join(FIXTURES, 'tiny')]);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /on disk\s+189 tensors in 2 file\(s\)/);
});

test('every command has --help; no command prints usage and exits 2; unknown command is one line', () => {
  for (const cmd of ['generate', 'chat', 'inspect', 'logits']) {
    const r = lmoe([cmd, '--help']);
    assert.equal(r.status, 0, `${cmd} --help: ${r.stderr}`);
    assert.match(r.stdout, new RegExp(`^Usage: lmoe ${cmd}`));
  }
  assert.equal(lmoe(['--help']).status, 0);
  assert.equal(lmoe([]).status, 2);
  const bad = lmoe(['frobnicate']);
  assert.equal(bad.status, 2);
  assert.equal(bad.stderr.trim().split('\n').length, 1);
  assert.match(bad.stderr, /^lmoe: error: unknown command "frobnicate"/);
});

test('usage errors are one line with exit status 2', () => {
  const dir = path.join(FIXTURES, 'tiny');
  for (const args of [
    ['generate', '--model', dir],
    ['generate', '--model', dir, '--ids', '1', '--prompt', 'x'],
    ['generate', '--model', dir, '--ids', '1', '--max-tokens', '0'],
    ['generate', '--model', dir, '--ids', '1', '--temperature', 'hot'],
    ['generate', '--model', dir, '--ids', '1', '--top-p', '1.5'],
    ['logits', '--ids', 'x'], // no --model: the embedded model, but the ids are checked first
    ['logits', '--model', dir],
    ['logits', '--model', dir, '--ids', '1', '--frob'],
  ]) {
    const r = lmoe(args);
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /^lmoe: error: /);
    assert.equal(r.stdout, '');
  }
});

test('chat over a pipe keeps history and answers each turn', () => {
  const dir = path.join(FIXTURES, 'tiny');
  const r = lmoe(['chat', '--model', dir, '--max-tokens', '6', '--temperature', '0', '--ignore-eos', '--system', 'Be brief.'], 'Hello there\n/reset\nWhat is lightning attention?\n/exit\nnot read\n');
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.split('\n').filter((l) => l.length > 0);
  assert.equal(lines.length, 2, `two replies, got ${JSON.stringify(r.stdout)}`);
});
