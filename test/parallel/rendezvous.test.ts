/**
 * The host rendezvous over loopback, in one process (no GPU): four ranks receive rank 0's 128 bytes, ranks that
 * start before rank 0 listens retry, timeouts name address:port, bad ranks are refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { joinRendezvous, listenRendezvous, rendezvous, rendezvousOptionsFromEnv, RendezvousError, UNIQUE_ID_BYTES } from '../../src/parallel/rendezvous.js';

const HOST = '127.0.0.1';

/** A port that was free a moment ago. */
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, HOST, () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

test('4 ranks over loopback all receive the same 128 bytes from rank 0', async () => {
  const port = await freePort();
  const id = new Uint8Array(UNIQUE_ID_BYTES).map((_, i) => (i * 37 + 11) & 255);
  const got = await Promise.all(
    [0, 1, 2, 3].map((rank) => rendezvous({ rank, worldSize: 4, address: HOST, port, timeoutMs: 10_000, createId: () => id })),
  );
  for (const g of got) {
    assert.equal(g.length, UNIQUE_ID_BYTES);
    assert.deepEqual(new Uint8Array(g), id);
  }
});

test('ranks that start before rank 0 listens retry until it does; the default id is random', async () => {
  const port = await freePort();
  const early = [1, 2, 3].map((rank) => joinRendezvous({ rank, worldSize: 4, address: HOST, port, timeoutMs: 10_000 }));
  await new Promise((r) => setTimeout(r, 300));
  const server = await listenRendezvous({ rank: 0, worldSize: 4, address: HOST, port, timeoutMs: 10_000 });
  const [root, ...others] = await Promise.all([server.done, ...early]);
  assert.equal(root.length, UNIQUE_ID_BYTES);
  assert.ok(root.some((b) => b !== 0));
  for (const o of others) assert.deepEqual(o, root);
});

test('world size 1 needs no network', async () => {
  const id = await rendezvous({ rank: 0, worldSize: 1, address: HOST, port: 1, createId: () => new Uint8Array(128).fill(7) });
  assert.deepEqual(id, Buffer.alloc(128, 7));
});

test('rank 0 times out naming address:port and the missing ranks', async () => {
  const port = await freePort();
  const joined = joinRendezvous({ rank: 1, worldSize: 3, address: HOST, port, timeoutMs: 1500 }).then(() => undefined, (e: unknown) => e);
  const root = rendezvous({ rank: 0, worldSize: 3, address: HOST, port, timeoutMs: 500 });
  await assert.rejects(root, (e: unknown) => {
    assert.ok(e instanceof RendezvousError);
    assert.match(e.message, new RegExp(`^rendezvous at 127\\.0\\.0\\.1:${port} timed out after 500 ms: 2 of 3 ranks joined, missing rank\\(s\\) 2$`));
    assert.ok(!e.message.includes('\n'));
    return true;
  });
  assert.ok((await joined) instanceof RendezvousError); // rank 0 went away: rank 1 retries until its own deadline
});

test('a rank with no rank 0 times out naming address:port', async () => {
  const port = await freePort();
  const t0 = Date.now();
  await assert.rejects(joinRendezvous({ rank: 2, worldSize: 4, address: HOST, port, timeoutMs: 400 }), (e: unknown) => {
    assert.ok(e instanceof RendezvousError);
    assert.equal(e.message, `rendezvous at 127.0.0.1:${port} timed out after 400 ms: rank 2 of 4 did not receive the id from rank 0`);
    return true;
  });
  assert.ok(Date.now() - t0 < 2000);
});

test('bad rank numbers are rejected locally', async () => {
  for (const [rank, worldSize] of [[-1, 4], [4, 4], [1.5, 4], [0, 0]] as const) {
    await assert.rejects(rendezvous({ rank, worldSize, address: HOST, port: 29500 }), (e: unknown) => {
      assert.ok(e instanceof RendezvousError);
      assert.equal(e.code, 'INVALID_ARGUMENT');
      return true;
    });
  }
});

/** A raw client sending any hello (bypassing the local checks), returning rank 0's refusal message. */
async function rawHello(port: number, rank: number, worldSize: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: HOST, port }, () => {
      const h = Buffer.alloc(16);
      h.writeUInt32LE(0x454f4d4c, 0);
      h.writeUInt32LE(1, 4);
      h.writeUInt32LE(rank, 8);
      h.writeUInt32LE(worldSize, 12);
      s.write(h);
    });
    let buf = Buffer.alloc(0);
    s.on('data', (c: Buffer) => (buf = Buffer.concat([buf, c])));
    s.on('close', () => (buf[0] === 1 ? resolve(buf.subarray(5, 5 + buf.readUInt32LE(1)).toString('utf8')) : reject(new Error(`no refusal: ${buf.toString('hex')}`))));
    s.on('error', reject);
  });
}

test('rank 0 refuses out-of-range, duplicate and wrong-world-size ranks, then still completes', async () => {
  const port = await freePort();
  const server = await listenRendezvous({ rank: 0, worldSize: 3, address: HOST, port, timeoutMs: 10_000 });
  assert.match(await rawHello(port, 0, 3), /rank 0 is not in \[1, 3\)/);
  assert.match(await rawHello(port, 7, 3), /rank 7 is not in \[1, 3\)/);
  assert.match(await rawHello(port, 1, 5), /rank 1 says world size 5, rank 0 has 3/);
  const one = joinRendezvous({ rank: 1, worldSize: 3, address: HOST, port, timeoutMs: 10_000 });
  await new Promise((r) => setTimeout(r, 200));
  assert.match(await rawHello(port, 1, 3), /rank 1 joined twice/);
  await assert.rejects(joinRendezvous({ rank: 1, worldSize: 4, address: HOST, port, timeoutMs: 10_000 }), /world size 4, rank 0 has 3/);
  const two = joinRendezvous({ rank: 2, worldSize: 3, address: HOST, port, timeoutMs: 10_000 });
  const [root, a, b] = await Promise.all([server.done, one, two]);
  assert.deepEqual(a, root);
  assert.deepEqual(b, root);
});

test('options from the environment', () => {
  assert.deepEqual(rendezvousOptionsFromEnv({ LMOE_RANK: '3', LMOE_WORLD_SIZE: '8', LMOE_MASTER_ADDR: '10.0.0.5', LMOE_MASTER_PORT: '29600' }), {
    rank: 3, worldSize: 8, address: '10.0.0.5', port: 29600,
  });
  assert.deepEqual(rendezvousOptionsFromEnv({}), { rank: 0, worldSize: 1, address: '127.0.0.1', port: 29500 });
  assert.throws(() => rendezvousOptionsFromEnv({ LMOE_RANK: 'x' }), /LMOE_RANK=x: expected a non-negative integer/);
});
