/**
 * Server behaviour that a real model cannot be made to show on demand, driven by scripted engines (the HTTP layer is
 * the real one): tool calls parsed into `tool_calls` (stream and not), a failure mid-stream (one sanitised error
 * event, then [DONE]) and before the body (500), /health 503 while loading and when the engine stalls, drain with
 * running requests finishing, drain with timeout 0 cutting streams off cleanly; and the real CLI process draining on
 * SIGTERM and exiting 0.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import OpenAI from 'openai';
import { loadModelInfo } from '../../src/engine/model.js';
import type { EngineRequest, SchedulerStats, SequenceListener } from '../../src/engine/scheduler.js';
import type { Engine, EngineInfo } from '../../src/server/engine-client.js';
import { startServer, type RunningServer, type ServerOptions } from '../../src/server/server.js';
import { FIXTURES, REPO_ROOT } from '../helpers/paths.js';

const TINY = path.join(FIXTURES, 'tiny');
const info = await loadModelInfo(TINY);
const tok = info.tokenizer!;

type Script = (req: EngineRequest, l: SequenceListener, aborted: () => boolean) => Promise<void>;

class ScriptedEngine implements Engine {
  readonly info: EngineInfo = { device: 'scripted', maxSequenceTokens: 1 << 20, maxSequences: 8, kvTokens: 1 << 20 };
  stats: SchedulerStats = { running: 0, waiting: 0, preemptions: 0, steps: 0, slotsUsed: 0, kvUsage: 0 };
  msSinceProgress = 0;
  alive = true;
  readonly requests: EngineRequest[] = [];
  constructor(private readonly script: Script) {}
  submit(req: EngineRequest, l: SequenceListener): { abort(): void } {
    this.requests.push(req);
    let aborted = false;
    setImmediate(() => {
      l.onScheduled?.();
      void this.script(req, l, () => aborted);
    });
    return { abort: () => (aborted = true) };
  }
  async shutdown(): Promise<void> {
    this.alive = false;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Emits `ids` one per `delayMs`, then finishes (unless aborted). */
function emit(ids: readonly number[], delayMs = 0, reason: 'stop' | 'length' = 'stop'): Script {
  return async (req, l, aborted) => {
    for (const id of ids) {
      if (aborted()) return;
      if (delayMs) await sleep(delayMs);
      l.onToken({ id });
    }
    if (!aborted()) l.onFinish(reason, { promptTokens: req.prompt.length, completionTokens: ids.length });
  };
}

async function withServer(engine: Engine | Promise<Engine>, fn: (s: RunningServer, c: OpenAI) => Promise<void>, extra: Partial<ServerOptions> = {}): Promise<void> {
  const s = await startServer({ model: TINY, port: 0, engineFactory: () => Promise.resolve(engine), ...extra });
  try {
    await s.ready;
    await fn(s, new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'none', maxRetries: 0 }));
  } finally {
    await s.drain(0);
  }
}

/** Raw SSE: the data payloads in order. */
async function sse(url: string, body: unknown): Promise<string[]> {
  const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  assert.equal(r.headers.get('content-type'), 'text/event-stream');
  const text = await r.text();
  return text
    .split('\n\n')
    .filter((e) => e.startsWith('data: '))
    .map((e) => e.slice(6));
}

const TOOLS = [{ type: 'function' as const, function: { name: 'get_weather', description: 'Current weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }];
const CALL_TEXT = 'Let me check.<tool_calls>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_calls>';

test('tool calls: tools reach the template; <tool_calls> output becomes tool_calls (stream and not)', async () => {
  const eng = new ScriptedEngine(emit(tok.encode(CALL_TEXT, { parseSpecialTokens: false })));
  await withServer(eng, async (s, c) => {
    const r = await c.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: TOOLS });
    assert.match(tok.decode(eng.requests[0].prompt), /You are provided with these tools:\n<tools>\n\{"type": "function", "function": \{"name": "get_weather"/);
    const m = r.choices[0].message;
    assert.equal(r.choices[0].finish_reason, 'tool_calls');
    assert.equal(m.content, 'Let me check.');
    assert.equal(m.tool_calls!.length, 1);
    const call = m.tool_calls![0] as { id: string; type: string; function: { name: string; arguments: string } };
    assert.equal(call.type, 'function');
    assert.equal(call.function.name, 'get_weather');
    assert.deepEqual(JSON.parse(call.function.arguments), { city: 'Paris' });
    assert.ok(call.id.length > 0);

    let content = '';
    const calls: unknown[] = [];
    let finish = '';
    for await (const ch of await c.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'Weather?' }], tools: TOOLS, stream: true })) {
      const d = ch.choices[0]?.delta;
      content += d?.content ?? '';
      if (d?.tool_calls) calls.push(...d.tool_calls);
      if (ch.choices[0]?.finish_reason) finish = ch.choices[0].finish_reason;
    }
    assert.equal(content, 'Let me check.', 'the markup is never streamed as content');
    assert.equal(calls.length, 1);
    assert.equal(finish, 'tool_calls');

    // A follow-up turn with the assistant's tool call and the tool result renders through the template.
    await c.chat.completions.create({
      model: 'tiny',
      tools: TOOLS,
      messages: [
        { role: 'user', content: 'Weather in Paris?' },
        { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
        { role: 'tool', tool_call_id: 'call_1', content: '18 C, sunny' },
      ],
    });
    const rendered = tok.decode(eng.requests.at(-1)!.prompt);
    assert.match(rendered, /<tool_calls>\n\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}\n<\/tool_calls>/);
    assert.match(rendered, /tool name: get_weather\ntool result: 18 C, sunny/);
  });
});

test('a failure mid-stream sends one sanitised error event, then [DONE]; before the body it is a 500', async () => {
  const ids = tok.encode('Hello there friend', { parseSpecialTokens: false });
  const eng = new ScriptedEngine(async (_req, l) => {
    for (const id of ids) l.onToken({ id });
    await sleep(20);
    l.onError(new Error('CUDA_ERROR_ILLEGAL_ADDRESS at /home/secret/kernels.cu 0xdeadbeefcafe'));
  });
  await withServer(eng, async (s) => {
    const events = await sse(`${s.url}/v1/chat/completions`, { model: 'tiny', messages: [{ role: 'user', content: 'hi' }], stream: true });
    assert.equal(events.at(-1), '[DONE]');
    const errs = events.filter((e) => e.startsWith('{"error"'));
    assert.equal(errs.length, 1);
    const err = JSON.parse(errs[0]).error;
    assert.equal(err.type, 'server_error');
    assert.doesNotMatch(JSON.stringify(err), /secret|deadbeef|CUDA/);
    for (const e of events.slice(0, -1)) JSON.parse(e); // every payload is JSON
    assert.ok(!events.some((e) => /"finish_reason":"(error|abort)/.test(e)), 'no internal finish reasons');

    const r = await fetch(`${s.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }] }) });
    assert.equal(r.status, 500);
    const body = (await r.json()) as any;
    assert.deepEqual(Object.keys(body.error).sort(), ['code', 'message', 'param', 'type']);
    assert.doesNotMatch(body.error.message, /secret|deadbeef/);
  });
});

test('/health is 503 while loading and when the engine stalls with work queued', async () => {
  let release!: (e: Engine) => void;
  const eng = new ScriptedEngine(emit([1, 2, 3]));
  const s = await startServer({ model: TINY, port: 0, engineFactory: () => new Promise<Engine>((r) => (release = r)) });
  try {
    assert.equal((await fetch(`${s.url}/health`)).status, 503);
    const early = await fetch(`${s.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny', prompt: 'x' }) });
    assert.equal(early.status, 503);
    assert.ok(early.headers.get('retry-after'));
    release(eng);
    await s.ready;
    assert.equal((await fetch(`${s.url}/health`)).status, 200);
    eng.stats = { ...eng.stats, waiting: 3 };
    eng.msSinceProgress = 10 * 60_000;
    assert.equal((await fetch(`${s.url}/health`)).status, 503, 'watchdog');
    eng.msSinceProgress = 0;
    assert.equal((await fetch(`${s.url}/health`)).status, 200);
  } finally {
    await s.drain(0);
  }
});

test('drain: new requests 503, running ones finish; timeout 0 cuts streams off with an error event + [DONE]', async () => {
  const ids = tok.encode('one two three four five six', { parseSpecialTokens: false });
  const eng = new ScriptedEngine(emit(ids, 40));
  const s = await startServer({ model: TINY, port: 0, engineFactory: () => Promise.resolve(eng) });
  await s.ready;
  const running = sse(`${s.url}/v1/completions`, { model: 'tiny', prompt: 'x', stream: true });
  await sleep(60);
  const drained = s.drain(10_000);
  await sleep(10);
  assert.equal((await fetch(`${s.url}/health`)).status, 503);
  const refused = await fetch(`${s.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny', prompt: 'x' }) }).catch(() => undefined);
  if (refused) assert.equal(refused.status, 503);
  const events = await running;
  assert.equal(events.at(-1), '[DONE]');
  assert.ok(events.some((e) => e.includes('"finish_reason":"stop"')), 'the running request finished normally');
  await drained;
  assert.equal(s.state, 'stopped');

  const endless = new ScriptedEngine(async (_req, l, aborted) => {
    while (!aborted()) {
      l.onToken({ id: ids[0] });
      await sleep(20);
    }
  });
  const s2 = await startServer({ model: TINY, port: 0, engineFactory: () => Promise.resolve(endless) });
  await s2.ready;
  const cut = sse(`${s2.url}/v1/chat/completions`, { model: 'tiny', messages: [{ role: 'user', content: 'hi' }], stream: true });
  await sleep(100);
  await s2.drain(0);
  const ev = await cut;
  assert.equal(ev.at(-1), '[DONE]');
  assert.equal(ev.filter((e) => e.startsWith('{"error"')).length, 1);
});

test('lmoe serve drains on SIGTERM and exits 0', async () => {
  const cli = path.join(REPO_ROOT, 'dist', 'src', 'cli', 'main.js');
  const child = spawn(process.execPath, [cli, 'serve', '--model', TINY, '--port', '0', '--device', 'cpu', '--shutdown-timeout', '20'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      const m = /ready on (http:\/\/\S+)/.exec(stderr);
      if (m) resolve(m[1]);
    });
    child.once('exit', (code) => reject(new Error(`server exited early (${code}): ${stderr}`)));
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny', prompt: 'Once upon a time', max_tokens: 200, temperature: 0, ignore_eos: true, stream: true }) });
  const reader = r.body!.getReader();
  const first = await reader.read();
  assert.ok(!first.done);
  child.kill('SIGTERM');
  let rest = new TextDecoder().decode(first.value);
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    rest += new TextDecoder().decode(value);
  }
  assert.match(rest, /"finish_reason":"length"/, 'the in-flight request finished');
  assert.ok(rest.trimEnd().endsWith('data: [DONE]'));
  assert.equal(await exited, 0);
  assert.match(stderr, /SIGTERM: draining/);
});
