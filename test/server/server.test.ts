/**
 * The server end to end on the tiny fixture (CPU engine in its worker thread), through the official `openai`
 * client and raw HTTP: chat and completions, streamed and not (S1–S7: one id, role first, one finish_reason,
 * include_usage chunk, [DONE]; deltas concatenate to the non-streamed text), n > 1, logprobs, seeds, stop strings;
 * /v1/models, /health, /metrics, X-Request-Id; every hardening rule (E1 error shape, 400/401/404/413/415/429,
 * context length message, caps), each followed by a working request; 60 concurrent streams with a third of the
 * clients disconnecting mid-stream, none failing and all caches freed; batched output == the same request alone.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import OpenAI from 'openai';
import { startServer, type RunningServer } from '../../src/server/server.js';
import { FIXTURES } from '../helpers/paths.js';

const TINY = path.join(FIXTURES, 'tiny');
const KEY = 'sk-test-key';
let server: RunningServer;
let client: OpenAI;

before(async () => {
  server = await startServer({ model: TINY, port: 0, device: 'cpu', apiKeys: [KEY, 'sk-second'], maxNumSeqs: 16, maxWaiting: 200, maxBatchTokens: 256, limits: { maxTokensCap: 512 } });
  await server.ready;
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
});

after(async () => {
  await server.drain(0);
});

const MESSAGES = [
  { role: 'system' as const, content: 'You are terse.' },
  { role: 'user' as const, content: 'Say something about Paris.' },
];

async function raw(route: string, init: RequestInit & { json?: unknown } = {}): Promise<{ status: number; body: any; headers: Headers; text: string }> {
  const headers = new Headers(init.headers);
  if (!headers.has('authorization')) headers.set('authorization', `Bearer ${KEY}`);
  let body = init.body;
  if (init.json !== undefined) {
    body = JSON.stringify(init.json);
    if (!headers.has('content-type')) headers.set('content-type', 'application/json');
  }
  const r = await fetch(server.url + route, { ...init, headers, body });
  const text = await r.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: r.status, body: parsed, headers: r.headers, text };
}

function assertError(r: { status: number; body: any }, status: number, param?: string | null): void {
  assert.equal(r.status, status, JSON.stringify(r.body));
  const e = r.body?.error;
  assert.ok(e, 'E1: an {"error": {...}} body');
  assert.deepEqual(Object.keys(e).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length <= 1000);
  if (param !== undefined) assert.equal(e.param, param);
}

/** "Server still works": a small greedy request succeeds. */
async function stillWorks(): Promise<void> {
  const r = await client.completions.create({ model: 'tiny', prompt: 'ok', max_tokens: 2, temperature: 0 });
  assert.equal(r.choices.length, 1);
}

test('chat: non-streamed and streamed greedy outputs agree; SSE contract', async () => {
  const full = await client.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 24, temperature: 0 });
  assert.equal(full.object, 'chat.completion');
  assert.equal(full.choices[0].message.role, 'assistant');
  assert.equal(full.usage!.completion_tokens, 24);
  assert.equal(full.usage!.total_tokens, full.usage!.prompt_tokens + 24);
  assert.equal(full.choices[0].finish_reason, 'length');

  const stream = await client.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true } });
  const ids = new Set<string>(), created = new Set<number>();
  let text = '', roles = 0, finishes = 0, usageChunks = 0, chunks = 0;
  for await (const c of stream) {
    chunks++;
    ids.add(c.id);
    created.add(c.created);
    assert.equal(c.object, 'chat.completion.chunk');
    if (c.choices.length === 0) {
      usageChunks++;
      assert.equal(c.usage!.completion_tokens, 24);
      continue;
    }
    assert.equal(c.usage, null, 'S5: usage null on ordinary chunks');
    const d = c.choices[0].delta;
    if (d.role) {
      roles++;
      assert.equal(chunks, 1, 'S2: role in the first chunk only');
    }
    text += d.content ?? '';
    if (c.choices[0].finish_reason) finishes++;
  }
  assert.equal(ids.size, 1, 'S1: one id');
  assert.equal(created.size, 1);
  assert.equal(roles, 1);
  assert.equal(finishes, 1, 'S3: exactly one finish_reason');
  assert.equal(usageChunks, 1);
  assert.equal(text, full.choices[0].message.content, 'S4');
});

test('completions: non-streamed and streamed, echo, n > 1, seeds, logprobs, stop strings', async () => {
  const base = { model: 'tiny', prompt: 'The capital of France is', max_tokens: 20, temperature: 0 };
  const full = await client.completions.create(base);
  assert.equal(full.object, 'text_completion');
  let text = '';
  let finishes = 0;
  for await (const c of await client.completions.create({ ...base, stream: true })) {
    text += c.choices[0]?.text ?? '';
    if (c.choices[0]?.finish_reason) finishes++;
  }
  assert.equal(text, full.choices[0].text);
  assert.equal(finishes, 1);

  const echo = await client.completions.create({ ...base, echo: true });
  assert.ok(echo.choices[0].text.startsWith('The capital of France is'));

  // A stop string cuts the text before its first occurrence; the stream never shows part of it.
  const cut = full.choices[0].text.slice(5, 8);
  if (cut.length === 3 && !cut.includes('\uFFFD')) {
    const stopped = await client.completions.create({ ...base, stop: [cut] });
    assert.equal(stopped.choices[0].text, full.choices[0].text.slice(0, full.choices[0].text.indexOf(cut)));
    assert.equal(stopped.choices[0].finish_reason, 'stop');
    let streamed = '';
    for await (const c of await client.completions.create({ ...base, stop: [cut], stream: true })) streamed += c.choices[0]?.text ?? '';
    assert.equal(streamed, stopped.choices[0].text);
  }

  // n = 3 with a seed: three choices, each index once; the same seed replays the same response.
  const sampled = { ...base, temperature: 1, n: 3, seed: 1234 };
  const a = await client.completions.create(sampled);
  const b = await client.completions.create(sampled);
  assert.deepEqual(a.choices.map((c) => c.index).sort(), [0, 1, 2]);
  assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
  assert.equal(a.usage!.completion_tokens, 60);

  const lp = await client.chat.completions.create({ model: 'tiny', messages: MESSAGES, max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 3 });
  const content = lp.choices[0].logprobs!.content!;
  assert.equal(content.length, 5);
  for (const t of content) {
    assert.equal(t.top_logprobs.length, 3);
    assert.ok(t.logprob <= 0);
    assert.equal(t.logprob, t.top_logprobs[0].logprob, 'greedy picks the most likely token');
  }
});

test('/v1/models, /health, /metrics, request ids', async () => {
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), ['tiny']);
  assert.equal(models.data[0].object, 'model');
  const health = await fetch(`${server.url}/health`);
  assert.equal(health.status, 200, '/health is public');
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  for (const name of [
    'lmoe_requests_running',
    'lmoe_requests_waiting',
    'lmoe_kv_cache_usage_ratio',
    'lmoe_linear_state_slots_used',
    'lmoe_preemptions_total',
    'lmoe_prompt_tokens_total',
    'lmoe_generation_tokens_total',
    'lmoe_time_to_first_token_seconds_bucket',
    'lmoe_inter_token_latency_seconds_bucket',
    'lmoe_e2e_request_latency_seconds_count',
    'lmoe_queue_time_seconds_count',
  ]) {
    assert.ok(metrics.includes(name), `metrics has ${name}`);
  }
  const echoed = await raw('/v1/models', { headers: { 'x-request-id': 'abc-123' } });
  assert.equal(echoed.headers.get('x-request-id'), 'abc-123');
  const fresh = await raw('/v1/models', { headers: { 'x-request-id': 'bad id with spaces' } });
  assert.match(fresh.headers.get('x-request-id')!, /^[0-9a-f-]{36}$/);
  assertError(await raw('/v1/nothing'), 404);
  assertError(await raw('/admin'), 404);
});

test('authentication (A1): missing, wrong and right keys', async () => {
  assertError(await raw('/v1/models', { headers: { authorization: '' } }), 401);
  assertError(await raw('/v1/models', { headers: { authorization: 'Bearer nope' } }), 401);
  assertError(await raw('/v1/models', { headers: { authorization: `Basic ${KEY}` } }), 401);
  assert.equal((await raw('/v1/models', { headers: { authorization: 'Bearer sk-second' } })).status, 200);
  assertError(await raw('/v1/chat/completions', { method: 'POST', headers: { authorization: 'Bearer x' }, json: {} }), 401);
  const preflight = await fetch(`${server.url}/v1/chat/completions`, { method: 'OPTIONS' });
  assert.equal(preflight.status, 204, 'OPTIONS is never guarded');
  await stillWorks();
});

test('bad requests are 4xx with the OpenAI error shape, and the server keeps working', async () => {
  const chat = (json: unknown) => raw('/v1/chat/completions', { method: 'POST', json });
  const ok = { model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 };
  assertError(await raw('/v1/chat/completions', { method: 'POST', body: '{"model": "tiny",', headers: { 'content-type': 'application/json' } }), 400);
  assertError(await raw('/v1/chat/completions', { method: 'POST', body: '[1,2]', headers: { 'content-type': 'application/json' } }), 400);
  assertError(await raw('/v1/chat/completions', { method: 'POST', body: '['.repeat(100_000) + ']'.repeat(100_000), headers: { 'content-type': 'application/json' } }), 400);
  assertError(await raw('/v1/chat/completions', { method: 'POST', body: JSON.stringify(ok), headers: { 'content-type': 'text/plain' } }), 415);
  for (const messages of [null, 'hi', 5, [], [{}], [123], [{ role: 123, content: 'x' }], [{ role: 'user', content: 123 }], [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }]]) {
    assertError(await chat({ ...ok, messages }), 400, 'messages');
  }
  assertError(await chat({ messages: ok.messages }), 400, 'model');
  assertError(await chat({ ...ok, model: 'gpt-4' }), 404, 'model');
  assertError(await chat({ ...ok, temperature: '0.5' }), 400, 'temperature');
  assertError(await chat({ ...ok, temperature: 2.5 }), 400, 'temperature');
  assertError(await chat({ ...ok, top_p: 0 }), 400, 'top_p');
  assertError(await chat({ ...ok, n: 1000 }), 400, 'n');
  assertError(await chat({ ...ok, max_tokens: 0 }), 400, 'max_tokens');
  assertError(await chat({ ...ok, seed: 9223372036854775808 }), 400, 'seed');
  assertError(await chat({ ...ok, stop: ['a', 'b', 'c', 'd', 'e'] }), 400, 'stop');
  assertError(await chat({ ...ok, top_logprobs: 5 }), 400, 'top_logprobs');
  assertError(await chat({ ...ok, logprobs: true, top_logprobs: 21 }), 400, 'top_logprobs');
  assertError(await chat({ ...ok, stream_options: { include_usage: true } }), 400, 'stream_options');
  assertError(await chat({ ...ok, logit_bias: { '-1': 5, abc: 1, '99999999': 2 } }), 400, 'logit_bias');
  assertError(await chat({ ...ok, response_format: { type: 'json_object' } }), 400);
  assertError(await chat({ ...ok, chat_template: '{{ 1 }}' }), 400);
  assertError(await chat({ ...ok, tool_choice: 'required', tools: [{ type: 'function', function: { name: 'f' } }] }), 400, 'tool_choice');
  assertError(await raw('/v1/completions', { method: 'POST', json: { model: 'tiny', prompt: '' } }), 400, 'prompt');
  assertError(await raw('/v1/completions', { method: 'POST', json: { model: 'tiny', prompt: [1, 2, 1_000_000] } }), 400, 'prompt');
  assertError(await raw('/v1/completions', { method: 'POST', json: { model: 'tiny', prompt: 'x', logprobs: 6 } }), 400, 'logprobs');
  assertError(await raw('/v1/completions', { method: 'POST', json: { model: 'tiny', prompt: 'x', logprobs: 2, echo: true } }), 400, 'logprobs');
  // Unknown fields and __proto__ keys are inert.
  assert.equal((await raw('/v1/completions', { method: 'POST', body: '{"model":"tiny","prompt":"x","max_tokens":1,"__proto__":{"n":5},"whatever":1}', headers: { 'content-type': 'application/json' } })).status, 200);
  // Body over the limit (4 MiB): 413.
  const huge = JSON.stringify({ model: 'tiny', prompt: 'x'.repeat(5 << 20) });
  assertError(await raw('/v1/completions', { method: 'POST', body: huge, headers: { 'content-type': 'application/json' } }), 413);
  // Errors before the stream starts are plain HTTP errors even with stream: true.
  const pre = await chat({ ...ok, stream: true, temperature: -1 });
  assertError(pre, 400, 'temperature');
  await stillWorks();
});

test('context length (§4): "maximum context length is N tokens" with the numbers; never parked', async () => {
  // The tiny fixture has a 10M-token context; the server's KV cache (2 × 2^20 cap → 1,048,576 tokens) bounds a
  // request further. Prompt + max_tokens over max_tokens cap → 400; over the model context → 400 context_length_exceeded.
  const r = await raw('/v1/completions', { method: 'POST', json: { model: 'tiny', prompt: 'hi', max_tokens: 513 } });
  assertError(r, 400, 'max_tokens');
  const small = await startServer({ model: TINY, port: 0, device: 'cpu', maxModelLen: 64, maxNumSeqs: 2 });
  try {
    await small.ready;
    const c = new OpenAI({ baseURL: `${small.url}/v1`, apiKey: 'none', maxRetries: 0 });
    await assert.rejects(c.completions.create({ model: 'tiny', prompt: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], max_tokens: 60 }), (e: any) => {
      assert.equal(e.status, 400);
      assert.equal(e.code, 'context_length_exceeded');
      assert.equal(e.param, 'max_tokens');
      assert.match(e.message, /This model's maximum context length is 64 tokens\. .*70/);
      return true;
    });
    await assert.rejects(c.completions.create({ model: 'tiny', prompt: Array.from({ length: 64 }, (_, i) => i), max_tokens: 1 }), (e: any) => e.status === 400 && /maximum context length is 64 tokens/.test(e.message));
    await assert.rejects(c.completions.create({ model: 'tiny', prompt: 'x', max_tokens: 65 }), (e: any) => e.status === 400);
    // Omitted max_tokens on chat: the remaining context.
    const r2 = await c.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], temperature: 0, stop: [] });
    assert.equal(r2.usage!.total_tokens <= 64, true);
  } finally {
    await small.drain(0);
  }
});

test('queue full → 429 with Retry-After; the server recovers', async () => {
  const s = await startServer({ model: TINY, port: 0, device: 'cpu', maxNumSeqs: 1, maxWaiting: 1 });
  try {
    await s.ready;
    const body = (max: number) => ({ model: 'tiny', prompt: 'hello there', max_tokens: max, temperature: 0, ignore_eos: true });
    const post = (json: unknown) => fetch(`${s.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(json) });
    const long = [post(body(400)), post(body(400))];
    await new Promise((r) => setTimeout(r, 100));
    const refused = await post(body(2));
    assert.equal(refused.status, 429);
    assert.ok(Number(refused.headers.get('retry-after')) >= 1);
    const e = (await refused.json()) as any;
    assert.equal(e.error.type, 'rate_limit_error');
    for (const r of await Promise.all(long)) assert.equal(r.status, 200);
    assert.equal((await post(body(2))).status, 200);
    const metrics = await (await fetch(`${s.url}/metrics`)).text();
    assert.match(metrics, /lmoe_admission_rejections_total\{reason="queue_full"\} 1/);
  } finally {
    await s.drain(0);
  }
});

test('60 concurrent streams, a third disconnecting mid-stream: none fail, all caches freed, batched == alone', async () => {
  const prompts = Array.from({ length: 60 }, (_, i) => `Request number ${i}: tell a story about ${['cats', 'ships', 'stars'][i % 3]}`);
  // Reference: a few of them alone, one at a time.
  const alone = new Map<number, string>();
  for (const i of [0, 7, 31, 59]) {
    const r = await client.completions.create({ model: 'tiny', prompt: prompts[i], max_tokens: 24, temperature: 0, ignore_eos: true } as any);
    alone.set(i, r.choices[0].text);
  }
  const results = await Promise.all(
    prompts.map(async (prompt, i) => {
      const disconnect = i % 3 === 1;
      const ac = new AbortController();
      let text = '';
      let chunks = 0;
      try {
        const stream = await client.completions.create({ model: 'tiny', prompt, max_tokens: disconnect ? 400 : 24, temperature: 0, ignore_eos: true, stream: true } as any, { signal: ac.signal });
        for await (const c of stream as any) {
          text += c.choices[0]?.text ?? '';
          if (disconnect && ++chunks === 3) ac.abort();
        }
        return { i, text, aborted: ac.signal.aborted };
      } catch (e) {
        if (disconnect && ac.signal.aborted) return { i, text, aborted: true };
        throw e;
      }
    }),
  );
  for (const r of results) {
    if (r.i % 3 === 1) assert.ok(r.aborted, `request ${r.i} was meant to disconnect`);
    else if (alone.has(r.i)) assert.equal(r.text, alone.get(r.i), `request ${r.i}: batched == alone`);
  }
  // Within a few engine steps, nothing is running and every slot / block is free again.
  let m = '';
  for (let t = 0; t < 50; t++) {
    await new Promise((r) => setTimeout(r, 100));
    m = await (await fetch(`${server.url}/metrics`)).text();
    if (/lmoe_requests_running 0\n/.test(m) && /lmoe_linear_state_slots_used 0\n/.test(m) && /lmoe_kv_cache_usage_ratio 0\n/.test(m)) break;
  }
  assert.match(m, /lmoe_requests_running 0\n/);
  assert.match(m, /lmoe_requests_waiting 0\n/);
  assert.match(m, /lmoe_linear_state_slots_used 0\n/);
  assert.match(m, /lmoe_kv_cache_usage_ratio 0\n/);
  const disconnects = Number(/lmoe_client_disconnects_total (\d+)/.exec(m)![1]);
  assert.ok(disconnects >= 20, `client disconnects counted (${disconnects})`);
  await stillWorks();
});

test('cancellation storm: 200 streams asking for 500 tokens (the cap here) with a 0.5 s client timeout, then the server is free', async () => {
  const storm = Array.from({ length: 200 }, async (_, i) => {
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), 500);
    try {
      const r = await fetch(`${server.url}/v1/completions`, {
        method: 'POST',
        signal: ac.signal,
        headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
        body: JSON.stringify({ model: 'tiny', prompt: `storm ${i}`, max_tokens: 500, ignore_eos: true, stream: true }),
      });
      if (r.status !== 200 && r.status !== 429) assert.fail(`status ${r.status}: ${await r.text()}`);
      await r.text();
    } catch (e) {
      if ((e as Error).name !== 'AbortError') throw e;
    } finally {
      clearTimeout(timer);
    }
  });
  await Promise.all(storm);
  const t0 = performance.now();
  await stillWorks();
  assert.ok(performance.now() - t0 < 5000, 'a short request completes within 5 s');
  let m = '';
  for (let t = 0; t < 50; t++) {
    m = await (await fetch(`${server.url}/metrics`)).text();
    if (/lmoe_requests_running 0\n/.test(m) && /lmoe_requests_waiting 0\n/.test(m)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.match(m, /lmoe_requests_running 0\n/);
  assert.match(m, /lmoe_requests_waiting 0\n/);
  assert.match(m, /lmoe_linear_state_slots_used 0\n/);
});
