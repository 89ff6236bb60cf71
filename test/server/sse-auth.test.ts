/**
 * SSE writer (src/server/sse.ts, SERVING.md §5 S7–S9) and API keys (src/server/auth.ts, A1, A4).
 *
 * SSE: headers and framing over a real HTTP server and raw client; the error event in the E1 shape; `[DONE]` and
 * end; backpressure with a fake response (send waits for 'drain'), a stall (send rejects, the response is
 * destroyed), a close while waiting; a real slow reader that stops reading; pings only while idle.
 * Auth: right key, wrong key, wrong scheme, missing header, several keys, case-insensitive scheme, redaction.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { SseWriter, StreamClosedError, type SseResponse } from '../../src/server/sse.js';
import { HttpError } from '../../src/server/errors.js';
import { ApiKeys, redactArgs } from '../../src/server/auth.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A server whose handler gets an SseWriter; resolves with its URL and a closer. */
async function withServer(
  handler: (res: http.ServerResponse) => Promise<void>,
  fn: (url: string) => Promise<void>,
): Promise<void> {
  const errors: unknown[] = [];
  const server = http.createServer((_req, res) => {
    handler(res).catch((e) => errors.push(e));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  try {
    await fn(`http://127.0.0.1:${port}/`);
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
  assert.deepEqual(errors, []);
}

function get(url: string): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      res.on('error', reject);
    }).on('error', reject);
  });
}

test('SSE: headers, data framing, error event, [DONE] over a real connection', async () => {
  await withServer(
    async (res) => {
      const w = new SseWriter(res, { stallTimeoutMs: 1000, pingIntervalMs: 10_000 });
      w.start({ 'X-Request-Id': 'abc' });
      await w.send({ id: 'c1', choices: [{ delta: { content: 'é\n"x"' } }] });
      w.ping();
      await w.error(new HttpError(500, 'generation failed'));
      await w.done();
      assert.equal(w.closed, true);
      await assert.rejects(w.send({}), StreamClosedError);
    },
    async (url) => {
      const r = await get(url);
      assert.equal(r.status, 200);
      assert.equal(r.headers['content-type'], 'text/event-stream');
      assert.equal(r.headers['cache-control'], 'no-cache');
      assert.equal(r.headers['x-accel-buffering'], 'no');
      assert.equal(r.headers['connection'], 'keep-alive');
      assert.equal(r.headers['x-request-id'], 'abc');
      assert.equal(
        r.body,
        'data: {"id":"c1","choices":[{"delta":{"content":"é\\n\\"x\\""}}]}\n\n' +
          ': ping\n\n' +
          'data: {"error":{"message":"generation failed","type":"server_error","param":null,"code":null}}\n\n' +
          'data: [DONE]\n\n',
      );
      // Every data payload but the terminator is JSON (S7).
      for (const line of r.body.split('\n').filter((l) => l.startsWith('data: ') && l !== 'data: [DONE]')) {
        JSON.parse(line.slice(6));
      }
    },
  );
});

/** A ServerResponse stand-in whose write() result is controlled by the test. */
class FakeResponse extends EventEmitter implements SseResponse {
  writes: string[] = [];
  writeOk = true;
  status = 0;
  headers: Record<string, unknown> = {};
  writableEnded = false;
  destroyed = false;
  writableNeedDrain = false;
  writeHead(status: number, headers: Record<string, unknown> = {}): this {
    this.status = status;
    this.headers = headers;
    return this;
  }
  write(chunk: string): boolean {
    this.writes.push(chunk);
    this.writableNeedDrain = !this.writeOk;
    return this.writeOk;
  }
  end(): this {
    this.writableEnded = true;
    this.emit('close');
    return this;
  }
  destroy(): this {
    this.destroyed = true;
    this.emit('close');
    return this;
  }
  drain(): void {
    this.writableNeedDrain = false;
    this.emit('drain');
  }
}

test('SSE backpressure: send waits for drain (S9)', async () => {
  const res = new FakeResponse();
  const w = new SseWriter(res, { stallTimeoutMs: 5000, pingIntervalMs: 10_000 });
  w.start();
  assert.equal(res.status, 200);
  assert.equal(res.headers['Content-Type'], 'text/event-stream');
  res.writeOk = false;
  let resolved = false;
  const p = w.send({ a: 1 }).then(() => (resolved = true));
  const q = w.send({ b: 2 }); // a second send while the first waits shares the wait
  await sleep(20);
  assert.equal(resolved, false);
  assert.deepEqual(res.writes, ['data: {"a":1}\n\n', 'data: {"b":2}\n\n']);
  w.ping(); // no pings into a full buffer
  assert.equal(res.writes.length, 2);
  res.writeOk = true;
  res.drain();
  await p;
  await q;
  assert.equal(resolved, true);
  assert.equal(res.listenerCount('drain'), 0);
  await w.done();
  assert.equal(res.writes.at(-1), 'data: [DONE]\n\n');
  assert.equal(res.writableEnded, true);
});

test('SSE stall: send rejects after stallTimeoutMs and the response is destroyed (S9)', async () => {
  const res = new FakeResponse();
  const w = new SseWriter(res, { stallTimeoutMs: 30, pingIntervalMs: 10_000 });
  w.start();
  res.writeOk = false;
  const t0 = performance.now();
  await assert.rejects(w.send({ a: 1 }), (e: StreamClosedError) => e instanceof StreamClosedError && e.reason === 'stalled');
  assert.ok(performance.now() - t0 >= 25);
  assert.equal(res.destroyed, true);
  assert.equal(w.closed, true);
  await assert.rejects(w.send({}), (e: StreamClosedError) => e.reason === 'closed');
  await w.done(); // a no-op on a closed stream
  assert.equal(res.writes.length, 1);
});

test('SSE close while waiting for drain rejects with "closed"', async () => {
  const res = new FakeResponse();
  const w = new SseWriter(res, { stallTimeoutMs: 5000, pingIntervalMs: 10_000 });
  w.start();
  res.writeOk = false;
  const p = w.send({ a: 1 });
  res.emit('close');
  await assert.rejects(p, (e: StreamClosedError) => e.reason === 'closed');
  assert.equal(w.closed, true);
});

test('SSE pings only while idle (S8)', async () => {
  const res = new FakeResponse();
  const w = new SseWriter(res, { stallTimeoutMs: 1000, pingIntervalMs: 60 });
  w.start();
  w.startPings();
  // Busy: a write every 5 ms, no pings.
  for (let i = 0; i < 20; i++) {
    await w.send({ i });
    await sleep(5);
  }
  assert.ok(!res.writes.includes(': ping\n\n'), 'no ping while data flows');
  await sleep(200);
  const pings = res.writes.filter((x) => x === ': ping\n\n').length;
  assert.ok(pings >= 1 && pings <= 4, `pings: ${pings}`);
  w.stopPings();
  const n = res.writes.length;
  await sleep(150);
  assert.equal(res.writes.length, n);
  await w.done();
});

test('SSE with a real client that stops reading: send rejects "stalled" and the socket is freed', async () => {
  let settle!: (v: unknown) => void;
  const outcome = new Promise<unknown>((r) => (settle = r));
  let serverRes: http.ServerResponse | undefined;
  const payload = { data: 'x'.repeat(1 << 20) };
  await withServer(
    async (res) => {
      serverRes = res;
      const w = new SseWriter(res, { stallTimeoutMs: 200, pingIntervalMs: 10_000 });
      w.start();
      try {
        for (let i = 0; i < 256; i++) await w.send(payload);
        settle('finished');
      } catch (e) {
        settle(e);
      }
    },
    async (url) => {
      const req = http.get(url, (res) => res.once('data', () => res.pause())); // one chunk, then stop reading
      req.on('error', () => {});
      const e = await outcome;
      // A paused client does not notice the reset; the test just drops its side.
      req.destroy();
      assert.ok(e instanceof StreamClosedError, String(e));
      assert.equal(e.reason, 'stalled');
      assert.equal(serverRes?.destroyed, true);
    },
  );
});

// --- API keys (A1) ---------------------------------------------------------------------------------------------------

test('ApiKeys: right key, wrong key, wrong scheme, missing header', () => {
  const keys = new ApiKeys(['sk-secret']);
  assert.equal(keys.enabled, true);
  assert.equal(keys.check('Bearer sk-secret'), true);
  assert.equal(keys.check('bearer sk-secret'), true);
  assert.equal(keys.check('BEARER   sk-secret '), true);
  assert.equal(keys.check('Bearer sk-wrong'), false);
  assert.equal(keys.check('Bearer SK-SECRET'), false); // the token is case-sensitive
  assert.equal(keys.check('Bearer sk-secret2'), false);
  assert.equal(keys.check('Bearer sk-secre'), false);
  assert.equal(keys.check('Basic sk-secret'), false);
  assert.equal(keys.check('sk-secret'), false);
  assert.equal(keys.check('Bearer'), false);
  assert.equal(keys.check('Bearer '), false);
  assert.equal(keys.check('Bearer sk-secret extra'), false);
  assert.equal(keys.check(''), false);
  assert.equal(keys.check(undefined), false);
});

test('ApiKeys: several keys; no keys = open; empty keys refused', () => {
  const keys = new ApiKeys(['k1', 'k2', 'k3']);
  assert.equal(keys.check('Bearer k1'), true);
  assert.equal(keys.check('Bearer k2'), true);
  assert.equal(keys.check('Bearer k3'), true);
  assert.equal(keys.check('Bearer k4'), false);
  const open = new ApiKeys([]);
  assert.equal(open.enabled, false);
  assert.equal(open.check(undefined), true);
  assert.throws(() => new ApiKeys(['']), /non-empty/);
  // Only digests are kept: the key text is nowhere in the object.
  assert.ok(!JSON.stringify(Object.entries(keys)).includes('k1'));
});

test('redactArgs hides --api-key values (A4)', () => {
  assert.deepEqual(
    redactArgs(['serve', '--api-key', 'sk-1', '--port', '8000', '--api-key=sk-2', '--api-key-file', 'keys.txt', '--api-key']),
    ['serve', '--api-key', '***', '--port', '8000', '--api-key=***', '--api-key-file', 'keys.txt', '--api-key'],
  );
});
