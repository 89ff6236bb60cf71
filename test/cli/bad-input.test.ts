/**
 * Broken checkpoints and bad arguments, end to end (SERVING.md §9 F1–F11): each case is a corrupted copy of a
 * fixture in a temp dir, and must fail with a clear one-line error both from `loadModel` (typed error class,
 * message naming the file / tensor / field) and from `lmoe logits` (non-zero exit, stderr exactly one line starting
 * `lmoe: error:`, no stack trace, empty stdout). Also: token id ≥ vocab size, a malformed --ids list (exit 2), a
 * missing or weightless model dir, and --verbose adding the stack trace.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadModel } from '../../src/engine/model.js';
import { ConfigError, InvalidArgumentError, LightningMoeError, WeightsError } from '../../src/util/errors.js';
import { FIXTURES, REPO_ROOT } from '../helpers/paths.js';
import { addTensors, readRawSafetensors, removeTensors, rewriteHeader } from '../helpers/safetensors-writer.js';

const CLI = path.join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');
const SHARD1 = 'model-00001-of-00002.safetensors';
const SHARD2 = 'model-00002-of-00002.safetensors';
const INDEX = 'model.safetensors.index.json';

let root = '';
let serial = 0;

before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'lmoe-bad-input-'));
});
after(() => {
  if (root) fs.rmSync(root, { recursive: true, force: true });
});

/** A fresh copy of a fixture (without its reference outputs) to corrupt. Fixtures themselves are never touched. */
function copyFixture(name: string): string {
  const dir = path.join(root, `${name}-${++serial}`);
  fs.cpSync(path.join(FIXTURES, name), dir, { recursive: true, filter: (p) => path.basename(p) !== 'expected.safetensors' });
  return dir;
}

interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: readonly string[]): CliResult {
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT; // the child is a plain program, not a test file
  delete env.NODE_OPTIONS;
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env, timeout: 60_000 });
  assert.equal(r.error, undefined, `spawn failed: ${String(r.error)}`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

type Needle = string | RegExp;

function contains(text: string, needles: readonly Needle[], what: string): void {
  for (const n of needles) {
    if (typeof n === 'string') assert.ok(text.includes(n), `${what} should contain ${JSON.stringify(n)}: ${text}`);
    else assert.match(text, n, what);
  }
}

/** `lmoe logits` on `dir` fails with one `lmoe: error:` line on stderr containing every needle. */
function assertCliError(args: readonly string[], needles: readonly Needle[], status = 1): string {
  const r = cli(args);
  assert.equal(r.status, status, `exit status (stderr: ${r.stderr})`);
  assert.equal(r.stdout, '', 'nothing on stdout');
  assert.ok(r.stderr.endsWith('\n'), `stderr ends with a newline: ${JSON.stringify(r.stderr)}`);
  const lines = r.stderr.slice(0, -1).split('\n');
  assert.equal(lines.length, 1, `exactly one line on stderr: ${JSON.stringify(r.stderr)}`);
  const line = lines[0];
  assert.ok(line.startsWith('lmoe: error: '), `starts with "lmoe: error:": ${line}`);
  assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace');
  assert.doesNotMatch(line, /internal error/);
  contains(line, needles, 'stderr');
  return line;
}

function logitsArgs(dir: string, ids = '1,2,3'): string[] {
  return ['logits', '--model', dir, '--ids', ids];
}

/** loadModel(dir) rejects with an instance of `cls` whose one-line message contains every needle. */
async function assertLoadError(dir: string, cls: new (...a: any[]) => LightningMoeError, needles: readonly Needle[]): Promise<LightningMoeError> {
  let caught: unknown;
  try {
    const m = await loadModel(dir, { device: 'cpu' });
    m.dispose();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught !== undefined, `loadModel(${dir}) should fail`);
  assert.ok(caught instanceof cls, `expected ${cls.name}, got ${caught instanceof Error ? `${caught.name}: ${caught.message}` : String(caught)}`);
  assert.doesNotMatch(caught.message, /[\r\n]/, `one line: ${JSON.stringify(caught.message)}`);
  contains(caught.message, needles, `${cls.name} message`);
  return caught;
}

/** Both front doors reject `dir` with the same needles. */
async function bothFail(dir: string, cls: new (...a: any[]) => LightningMoeError, needles: readonly Needle[]): Promise<void> {
  await assertLoadError(dir, cls, needles);
  assertCliError(logitsArgs(dir), needles);
}

// ---------------------------------------------------------------------------------------------------------------
// Broken safetensors files (F1–F9)
// ---------------------------------------------------------------------------------------------------------------

test('truncated shard (last 100 bytes cut)', async () => {
  const dir = copyFixture('tiny');
  const f = path.join(dir, SHARD2);
  fs.truncateSync(f, fs.statSync(f).size - 100);
  await bothFail(dir, WeightsError, [SHARD2, 'truncated']);
});

test('oversized header length (200,000,000)', async () => {
  const dir = copyFixture('tiny');
  const fd = fs.openSync(path.join(dir, SHARD1), 'r+');
  const n = Buffer.alloc(8);
  n.writeBigUInt64LE(200_000_000n);
  fs.writeSync(fd, n, 0, 8, 0);
  fs.closeSync(fd);
  await bothFail(dir, WeightsError, [SHARD1, 'header length too large', '200000000']);
});

test('overlapping data offsets', async () => {
  const dir = copyFixture('tiny');
  let victim = '';
  rewriteHeader(path.join(dir, SHARD1), (h) => {
    const byOffset = Object.entries(h)
      .filter(([k]) => k !== '__metadata__')
      .sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0]);
    const [name, entry] = byOffset[1];
    victim = name;
    // Start 4 bytes early (same length): it now overlaps the previous tensor.
    entry.data_offsets = [entry.data_offsets[0] - 4, entry.data_offsets[1] - 4];
  });
  assert.ok(victim);
  await bothFail(dir, WeightsError, [SHARD1, victim, 'overlaps']);
});

test('byte length does not match dtype × shape', async () => {
  const dir = copyFixture('tiny');
  rewriteHeader(path.join(dir, SHARD1), (h) => {
    h['model.norm.weight'].shape = [47]; // F32 [47] = 188 bytes, the offsets span 192
  });
  await bothFail(dir, WeightsError, [SHARD1, 'model.norm.weight', 'byte length mismatch', '188', '192']);
});

test('missing shard file', async () => {
  const dir = copyFixture('tiny');
  fs.rmSync(path.join(dir, SHARD2));
  await bothFail(dir, WeightsError, [`missing shard ${SHARD2}`, INDEX]);
});

test('a Git LFS pointer in place of a shard', async () => {
  const dir = copyFixture('tiny');
  fs.writeFileSync(
    path.join(dir, SHARD1),
    'version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 123\n',
  );
  await bothFail(dir, WeightsError, [SHARD1, 'Git LFS pointer', 'not downloaded']);
});

test('a single-file checkpoint with trailing garbage', async () => {
  const dir = copyFixture('tiny-hf');
  fs.appendFileSync(path.join(dir, 'model.safetensors'), Buffer.from('junk'));
  await bothFail(dir, WeightsError, ['model.safetensors', 'trailing data']);
});

// ---------------------------------------------------------------------------------------------------------------
// config.json (F11)
// ---------------------------------------------------------------------------------------------------------------

test('config.json is not valid JSON', async () => {
  const dir = copyFixture('tiny');
  fs.writeFileSync(path.join(dir, 'config.json'), '{\n  "hidden_size": 48,\n  oops\n}\n');
  await bothFail(dir, ConfigError, ['config.json', 'invalid JSON']);
});

test('config.json with hidden_size a string', async () => {
  const dir = copyFixture('tiny');
  const c = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  c.hidden_size = '48';
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(c, null, 2));
  await bothFail(dir, ConfigError, ['config.json', '"hidden_size"', '"48"']);
});

test('config.json that does not match the weights (hidden_size changed)', async () => {
  const dir = copyFixture('tiny');
  const c = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  c.hidden_size = 64;
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(c, null, 2));
  await bothFail(dir, WeightsError, [/tensor model\.[\w.]+ has shape \[[\d, ]+\], expected \[[\d, ]*64[\d, ]*\]/, 'config.json']);
});

// ---------------------------------------------------------------------------------------------------------------
// Shards and names (F10, MODEL.md §12.3)
// ---------------------------------------------------------------------------------------------------------------

test('a shard path escaping the model dir in the index', async () => {
  const dir = copyFixture('tiny');
  const idx = JSON.parse(fs.readFileSync(path.join(dir, INDEX), 'utf8'));
  idx.weight_map['model.layers.1.self_attn.norm.weight'] = '../x.safetensors';
  fs.writeFileSync(path.join(dir, INDEX), JSON.stringify(idx, null, 2));
  // Make the target exist, so that only the name check can stop it.
  fs.copyFileSync(path.join(dir, SHARD1), path.join(root, 'x.safetensors'));
  await bothFail(dir, WeightsError, [INDEX, 'model.layers.1.self_attn.norm.weight', '"../x.safetensors"', 'plain file name']);
});

test('a shard that is a symlink to a file outside the model dir', async () => {
  const dir = copyFixture('tiny');
  const outside = path.join(root, `outside-${++serial}.safetensors`);
  fs.renameSync(path.join(dir, SHARD2), outside);
  fs.symlinkSync(outside, path.join(dir, SHARD2));
  await bothFail(dir, WeightsError, [SHARD2, 'outside the model directory']);
});

test('a missing tensor', async () => {
  const dir = copyFixture('tiny-hf');
  const removed = removeTensors(path.join(dir, 'model.safetensors'), (n) => n === 'model.layers.3.self_attn.norm.weight');
  assert.deepEqual(removed, ['model.layers.3.self_attn.norm.weight']);
  assert.ok(!('model.layers.3.self_attn.norm.weight' in readRawSafetensors(path.join(dir, 'model.safetensors')).header));
  await bothFail(dir, WeightsError, ['1 tensor(s) missing', 'model.layers.3.self_attn.norm.weight']);
});

test('an unexpected tensor (a shared expert)', async () => {
  const dir = copyFixture('tiny-hf');
  addTensors(path.join(dir, 'model.safetensors'), {
    'model.layers.0.shared_mlp.gate_proj.weight': { dtype: 'F32', shape: [4, 48], data: new Float32Array(4 * 48) },
  });
  await bothFail(dir, WeightsError, ['1 unexpected tensor(s)', 'model.layers.0.shared_mlp.gate_proj.weight']);
});

// ---------------------------------------------------------------------------------------------------------------
// Arguments and directories
// ---------------------------------------------------------------------------------------------------------------

test('token id ≥ vocabulary size names the id and the vocabulary size', async () => {
  const dir = path.join(FIXTURES, 'tiny'); // read-only use
  const model = await loadModel(dir, { device: 'cpu' });
  try {
    assert.throws(
      () => model.logits([1, 2, 5000]),
      (e: unknown) => e instanceof InvalidArgumentError && /5000/.test(e.message) && /1024/.test(e.message) && !/\n/.test(e.message),
    );
  } finally {
    model.dispose();
  }
  assertCliError(logitsArgs(dir, '1,2,5000'), ['token id 5000', '1024']);
});

test('--ids 1,x is a usage error (exit 2)', () => {
  assertCliError(logitsArgs(path.join(FIXTURES, 'tiny'), '1,x'), ['--ids', '"x"', 'lmoe logits --help'], 2);
  // Checked before the model is opened: a bad directory does not hide it.
  assertCliError(logitsArgs(path.join(root, 'nope'), '1,x'), ['--ids'], 2);
});

test('a model dir that does not exist', async () => {
  const dir = path.join(root, 'does-not-exist');
  await bothFail(dir, ConfigError, ['does-not-exist', 'not found']);
});

test('a model dir with no weights', async () => {
  const dir = path.join(root, `no-weights-${++serial}`);
  fs.mkdirSync(dir);
  for (const f of ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json']) {
    fs.copyFileSync(path.join(FIXTURES, 'tiny', f), path.join(dir, f));
  }
  await bothFail(dir, WeightsError, ['model.safetensors', INDEX, path.basename(dir)]);
});

test('--verbose adds the stack trace', () => {
  const dir = copyFixture('tiny');
  fs.rmSync(path.join(dir, SHARD2));
  const r = cli([...logitsArgs(dir), '--verbose']);
  assert.equal(r.status, 1);
  assert.equal(r.stdout, '');
  const lines = r.stderr.trimEnd().split('\n');
  assert.ok(lines[0].startsWith('lmoe: error: '), lines[0]);
  assert.ok(lines[0].includes(`missing shard ${SHARD2}`), lines[0]);
  assert.ok(lines.length > 2, `a stack follows: ${r.stderr}`);
  assert.match(r.stderr, /^\s+at /m, 'stack frames');
  assert.match(r.stderr, /WeightsError/);
});
