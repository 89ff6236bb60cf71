/**
 * The long-context CLI: `lmoe inspect --context` prints the memory plan (table and --json) with a verdict against
 * --device-memory, or none without it; bad sizes and flags are one-line usage errors (exit 2) naming the flag;
 * `lmoe generate --progress` reports prefill progress on stderr only (stdout unchanged), and not at all without
 * --progress when stderr is not a terminal; --prefill-chunk is validated; on a terminal the progress line updates
 * in place, throttled, from 8K-token prompts; Ctrl-C (SIGINT) during a prefill exits 130 promptly.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import { PrefillProgressLine, PROGRESS_MIN_TOKENS } from '../../src/cli/common.js';
import type { MemoryPlan } from '../../src/engine/memory-plan.js';
import { FIXTURES, REPO_ROOT } from '../helpers/paths.js';

const CLI = path.join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');
const TEXT01 = path.join(FIXTURES, 'configs', 'minimax-text-01.config.json');
const TINY = path.join(FIXTURES, 'tiny');

function lmoe(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env, timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('inspect --context 4M --device-memory 139.7GiB: the plan table and a one-line "does not fit" verdict', () => {
  const r = lmoe(['inspect', '--config', TEXT01, '--context', '4M', '--device-memory', '139.7GiB']);
  assert.equal(r.status, 0, r.stderr);
  const out = r.stdout;
  assert.match(out, /^memory plan for minimax_text_01: 4,194,304-token context × 1 sequence, bf16 weights/);
  assert.match(out, /\nweights\s+849\.6 GiB\s+912,210,785,792 B/);
  assert.match(out, /\n {2}experts\s+810\.0 GiB\s+869,730,877,440 B/);
  assert.match(out, /\nKV cache\s+160\.0 GiB\s+171,798,691,840 B\s+65,536 blocks of 64 tokens/);
  assert.match(out, /\nlightning states\s+280\.0 MiB\s+293,601,280 B/);
  assert.match(out, /\nactivations\s+[\d.]+ MiB\s+[\d,]+ B\s+256-token prefill chunk \(the smallest the planner picks; none fits\)/);
  assert.match(out, /\nreserve\s+1\.5 GiB\s+1,610,612,736 B/);
  assert.match(out, /\ntotal\s+1011\.4 GiB/);
  assert.match(out, /\ndevice memory\s+139\.7 GiB\s+150,001,732,812 B\s+--device-memory 139\.7GiB/);
  assert.match(out, /\nverdict\s+does not fit: a 4,194,304-token context needs 1011\.4 GiB \(weights 849\.6 GiB, KV cache 160\.0 GiB, .*\) but only 139\.7 GiB of device memory is available\n$/);
  assert.equal(r.stderr, '');
});

test('inspect --context --json prints the plan object; without a device size there is no verdict', () => {
  const r = lmoe(['inspect', '--model', TEXT01, '--context', '1.5M', '--sequences', '2', '--json']);
  assert.equal(r.status, 0, r.stderr);
  const plan = JSON.parse(r.stdout) as MemoryPlan;
  assert.equal(plan.contextTokens, 1_572_864);
  assert.equal(plan.sequences, 2);
  assert.equal(plan.kvCache.bytes, 2 * 1_572_864 * 40_960);
  assert.equal(plan.lightningStates.bytes, 2 * 293_601_280);
  assert.equal(plan.prefillChunk, 8192);
  assert.equal(plan.prefillChunkSource, 'default');
  assert.equal(plan.fits, undefined);
  assert.ok(!('reason' in plan) || plan.reason === undefined);
  const text = lmoe(['inspect', '--model', TEXT01, '--context', '64K']);
  assert.equal(text.status, 0, text.stderr);
  assert.match(text.stdout, /\nverdict\s+none: give --device-memory SIZE, or --device cuda/);
  assert.doesNotMatch(text.stdout, /device memory\s/);
});

test('inspect --context on a fixture directory that fits: the chunk that fits and the room to spare', () => {
  const r = lmoe(['inspect', '--model', TINY, '--context', '64K', '--device-memory', '2GiB', '--json']);
  assert.equal(r.status, 0, r.stderr);
  const plan = JSON.parse(r.stdout) as MemoryPlan;
  assert.equal(plan.fits, true);
  assert.equal(plan.prefillChunk, 8192);
  assert.equal(plan.prefillChunkSource, 'fit');
  assert.equal(plan.kvCache.bytes, 1024 * 16_384);
  const t = lmoe(['inspect', '--model', TINY, '--context', '65536', '--device-memory', '2GiB', '--prefill-chunk', '300']);
  assert.equal(t.status, 0, t.stderr);
  assert.match(t.stdout, /\nactivations\s+.*300-token prefill chunk \(as given\)/);
  assert.match(t.stdout, /\nverdict\s+fits, [\d.]+ MiB to spare\n$/);
});

test('inspect: bad plan flags are one-line usage errors naming the flag (exit 2)', () => {
  const cases: [string[], RegExp][] = [
    [['--context', '4X'], /--context: expected a token count such as 65536, 64K, 1M or 1\.5M, got "4X"/],
    [['--context', '0'], /--context: "0" is less than 1 token/],
    [['--context', '1.3K'], /--context: "1\.3K" is not a whole number of tokens/],
    [['--context', '4M', '--device-memory', '141G'], /--device-memory: expected a size such as 141GB/],
    [['--context', '4M', '--sequences', '0'], /--sequences: expected an integer ≥ 1, got "0"/],
    [['--context', '4M', '--prefill-chunk', 'big'], /--prefill-chunk: expected an integer ≥ 1, got "big"/],
    [['--sequences', '2'], /--sequences needs --context SIZE/],
    [['--device-memory', '80GB'], /--device-memory needs --context SIZE/],
    [['--context', '4M', '--device', 'cpu'], /--device: expected cuda/],
    [['--context', '4M', '--device', 'cuda', '--device-memory', '80GB'], /at most one of --device-memory SIZE or --device cuda/],
    [['--context'], /--context/],
  ];
  for (const [args, message] of cases) {
    const r = lmoe(['inspect', '--config', TEXT01, ...args]);
    assert.equal(r.status, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.equal(r.stdout, '');
    const lines = r.stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], /^lmoe: error: /);
    assert.match(lines[0], message);
  }
});

test('inspect --context --device cuda: a plan against the GPU, or one line saying why there is none', () => {
  const r = lmoe(['inspect', '--config', TEXT01, '--context', '1M', '--device', 'cuda']);
  if (r.status === 0) {
    assert.match(r.stdout, /\ndevice memory\s+[\d.]+ [GM]iB\s+[\d,]+ B\s+free on /);
  } else {
    assert.equal(r.status, 1, r.stderr);
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /^lmoe: error: /);
  }
});

test('generate --progress: prefill progress on stderr only; stdout unchanged; nothing without --progress off a terminal', () => {
  const ids = Array.from({ length: 300 }, (_, i) => ((i * 7) % 1000) + 4).join(',');
  const base = ['generate', '--model', TINY, '--ids', ids, '--max-tokens', '4', '--temperature', '0', '--ignore-eos', '--json'];
  const plain = lmoe(base);
  assert.equal(plain.status, 0, plain.stderr);
  assert.equal(plain.stderr, '', 'no progress when stderr is a pipe and --progress is absent');
  const shown = lmoe([...base, '--progress', '--prefill-chunk', '64']);
  assert.equal(shown.status, 0, shown.stderr);
  assert.equal(shown.stdout, plain.stdout);
  const lines = shown.stderr.trimEnd().split('\n');
  assert.ok(lines.length >= 1 && lines.length <= 5, `at most one line per chunk, throttled: ${shown.stderr}`);
  for (const l of lines) assert.match(l, /^prefill [\d,]+\/300 tokens \(\d+\.\d%\), [\d,]+ tokens\/s, (ETA|done in) /);
  assert.match(lines.at(-1)!, /^prefill 300\/300 tokens \(100\.0%\), [\d,]+ tokens\/s, done in [\d.]+ s$/);
  assert.ok(!shown.stderr.includes('\r'), 'plain lines when stderr is not a terminal');
  const done = lines.map((l) => Number(/^prefill ([\d,]+)/.exec(l)![1].replace(/,/g, '')));
  assert.ok(done.every((d, i) => i === 0 || d > done[i - 1]), `increasing: ${done}`);
  const bad = lmoe([...base, '--prefill-chunk', '0']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /^lmoe: error: --prefill-chunk: expected an integer ≥ 1, got "0"/);
});

test('progress on a terminal: one line updated in place from 8K-token prompts, throttled, closed at the end', () => {
  const out: string[] = [];
  const line = new PrefillProgressLine(false, true, (t) => out.push(t));
  const p = (done: number, total: number) => ({ done, total, tokensPerSecond: 1000, etaSeconds: (total - done) / 1000 });
  line.update(p(4096, PROGRESS_MIN_TOKENS - 1));
  line.update(p(PROGRESS_MIN_TOKENS - 1, PROGRESS_MIN_TOKENS - 1));
  assert.deepEqual(out, [], 'short prompts print nothing unless --progress');
  const total = 4 * 2 ** 20;
  line.update(p(8192, total));
  line.update(p(16384, total)); // within 0.5 s of the previous line: skipped
  line.update(p(total, total)); // the last line always prints, and ends the line
  assert.equal(out.length, 2);
  assert.equal(out[0], '\r\x1b[Kprefill 8,192/4,194,304 tokens (0.2%), 1,000 tokens/s, ETA 1h 9m');
  assert.equal(out[1], '\r\x1b[Kprefill 4,194,304/4,194,304 tokens (100.0%), 1,000 tokens/s, done in 1h 9m\n');
  line.end();
  assert.equal(out.length, 2, 'nothing left open');
  // an aborted prefill leaves the line open: end() closes it
  const cut: string[] = [];
  const aborted = new PrefillProgressLine(true, true, (t) => cut.push(t));
  aborted.update(p(64, 300));
  aborted.end();
  assert.deepEqual(cut, ['\r\x1b[Kprefill 64/300 tokens (21.3%), 1,000 tokens/s, ETA 0.2 s', '\n']);
});

test('Ctrl-C during a long prefill aborts between chunks: exit 130, stdout just a newline', async () => {
  const ids = Array.from({ length: 20_000 }, (_, i) => ((i * 7) % 1000) + 4).join(',');
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT;
  const child = spawn(process.execPath, [CLI, 'generate', '--model', TINY, '--ids', ids, '--max-tokens', '4', '--prefill-chunk', '1', '--progress'], { env });
  let stdout = '', stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  const started = new Promise<void>((resolve) => {
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr += d;
      if (stderr.includes('prefill ')) resolve();
    });
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  await started; // the prefill is running (20,000 one-token chunks take far longer than this test waits)
  const t0 = performance.now();
  child.kill('SIGINT');
  const code = await exited;
  assert.equal(code, 130, stderr);
  assert.ok(performance.now() - t0 < 5000, 'the abort landed within a few chunks');
  assert.equal(stdout, '\n');
  assert.doesNotMatch(stderr, /error/);
  assert.doesNotMatch(stderr, /prefill 20,000\/20,000/, 'the prefill did not finish');
});
