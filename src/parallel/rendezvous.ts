/**
 * Host rendezvous of the ranks (one process per GPU): rank 0 creates the 128-byte ncclUniqueId and hands it to every
 * other rank over TCP, like torchrun's MASTER_ADDR / MASTER_PORT. Single host: address 127.0.0.1; several hosts:
 * the address of rank 0's host that the others can reach (rank 0 binds it, or `bindAddress`, e.g. 0.0.0.0).
 *
 * Protocol (all integers little-endian u32):
 *   rank r ≥ 1 → rank 0:  "LMOE" magic, protocol version (1), r, world size
 *   rank 0 → rank r:      0x00 then the 128-byte id, once every rank 1..N-1 has joined;
 *                         or 0x01, a length and a UTF-8 message when r is rejected (bad or duplicate rank, wrong
 *                         world size), after which the connection closes
 *   rank r → rank 0:      0x06 (acknowledged), so rank 0 knows every id arrived before it blocks in ncclCommInitRank
 * Ranks ≥ 1 retry the connection until rank 0 listens. Every wait ends at `timeoutMs` with a one-line error naming
 * address:port.
 */

import net from 'node:net';
import { LightningMoeError } from '../util/errors.js';

export const UNIQUE_ID_BYTES = 128;
const MAGIC = 0x454f4d4c; // "LMOE" read as little-endian u32
const VERSION = 1;
const HELLO_BYTES = 16;
const ACK = 0x06;

/** The rendezvous failed: a timeout, a refused rank, a broken connection. */
export class RendezvousError extends LightningMoeError {
  constructor(message: string, code: 'INVALID_ARGUMENT' | 'ABORTED' = 'ABORTED') {
    super(code, message, { hint: 'check --master-addr/--master-port (LMOE_MASTER_ADDR/LMOE_MASTER_PORT), the rank numbers and that every rank was started' });
  }
}

export interface RendezvousOptions {
  rank: number;
  worldSize: number;
  /** Rank 0's address as the other ranks reach it (127.0.0.1 on one host). */
  address: string;
  port: number;
  /** Rank 0 listens here instead of `address` (e.g. '0.0.0.0'). */
  bindAddress?: string;
  /** Whole rendezvous deadline (default 300 s). */
  timeoutMs?: number;
  /** Rank 0 only: the id to share (default: 128 random bytes; pass `ncclUniqueId` for NCCL). */
  createId?: () => Uint8Array;
}

/** Rank, world size and master address/port from the environment (LMOE_RANK, LMOE_WORLD_SIZE, LMOE_MASTER_ADDR, LMOE_MASTER_PORT). */
export function rendezvousOptionsFromEnv(env: NodeJS.ProcessEnv = process.env): Pick<RendezvousOptions, 'rank' | 'worldSize' | 'address' | 'port'> {
  const int = (name: string, fallback?: number): number => {
    const raw = env[name];
    if (raw === undefined || raw === '') {
      if (fallback !== undefined) return fallback;
      throw new RendezvousError(`${name} is not set`, 'INVALID_ARGUMENT');
    }
    const v = Number(raw);
    if (!Number.isInteger(v) || v < 0) throw new RendezvousError(`${name}=${raw}: expected a non-negative integer`, 'INVALID_ARGUMENT');
    return v;
  };
  return {
    rank: int('LMOE_RANK', 0),
    worldSize: int('LMOE_WORLD_SIZE', 1),
    address: env.LMOE_MASTER_ADDR || '127.0.0.1',
    port: int('LMOE_MASTER_PORT', 29500),
  };
}

function validate(o: RendezvousOptions): void {
  const where = `${o.address}:${o.port}`;
  if (!Number.isInteger(o.worldSize) || o.worldSize < 1) throw new RendezvousError(`rendezvous at ${where}: world size ${o.worldSize} is not a positive integer`, 'INVALID_ARGUMENT');
  if (!Number.isInteger(o.rank) || o.rank < 0 || o.rank >= o.worldSize) {
    throw new RendezvousError(`rendezvous at ${where}: rank ${o.rank} is not in [0, ${o.worldSize})`, 'INVALID_ARGUMENT');
  }
  if (!Number.isInteger(o.port) || o.port < 0 || o.port > 65535) throw new RendezvousError(`rendezvous: port ${o.port} is not in [0, 65535]`, 'INVALID_ARGUMENT');
}

/**
 * Every rank calls this; each gets the same id (Buffer of 128 bytes). Rank 0 resolves once every other rank has
 * acknowledged the id. With worldSize 1 it returns rank 0's id without any network.
 */
export async function rendezvous(o: RendezvousOptions): Promise<Buffer> {
  validate(o);
  if (o.rank === 0) {
    const server = await listenRendezvous(o);
    return server.done;
  }
  return joinRendezvous(o);
}

/**
 * Rank 0: listens (resolves once listening; `port` 0 picks a free port, see `.port`) and `done` resolves with the
 * id after every rank has acknowledged it.
 */
export async function listenRendezvous(o: RendezvousOptions): Promise<{ port: number; done: Promise<Buffer>; close: () => void }> {
  validate(o);
  if (o.rank !== 0) throw new RendezvousError(`listenRendezvous is for rank 0, not rank ${o.rank}`, 'INVALID_ARGUMENT');
  const created = o.createId ? o.createId() : crypto.getRandomValues(new Uint8Array(UNIQUE_ID_BYTES));
  if (created.byteLength !== UNIQUE_ID_BYTES) throw new RendezvousError(`rendezvous id must be ${UNIQUE_ID_BYTES} bytes, got ${created.byteLength}`, 'INVALID_ARGUMENT');
  const id = Buffer.from(created.buffer, created.byteOffset, created.byteLength);
  const N = o.worldSize;
  if (N === 1) return { port: o.port, done: Promise.resolve(Buffer.from(id)), close: () => undefined };

  const server = net.createServer();
  const bind = o.bindAddress ?? o.address;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) =>
      reject(new RendezvousError(`rendezvous: rank 0 cannot listen on ${bind}:${o.port}: ${e.code ?? e.message}`)));
    server.listen(o.port, bind, () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  const where = `${o.address}:${port}`;
  const timeoutMs = o.timeoutMs ?? 300_000;

  const joined = new Map<number, net.Socket>();
  const acked = new Set<number>();
  const sockets = new Set<net.Socket>();
  let settled = false;
  let resolveDone!: (b: Buffer) => void, rejectDone!: (e: Error) => void;
  const done = new Promise<Buffer>((res, rej) => {
    resolveDone = res;
    rejectDone = rej;
  });
  const finish = (err?: Error): void => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    server.close();
    for (const s of sockets) s.destroy();
    if (err) rejectDone(err);
    else resolveDone(Buffer.from(id));
  };
  const timer = setTimeout(() => {
    const missing = [];
    for (let r = 1; r < N; r++) if (!joined.has(r)) missing.push(r);
    finish(new RendezvousError(`rendezvous at ${where} timed out after ${timeoutMs} ms: ${joined.size + 1} of ${N} ranks joined${missing.length ? `, missing rank(s) ${missing.join(', ')}` : ', not every rank acknowledged the id'}`));
  }, timeoutMs);

  const refuse = (s: net.Socket, message: string): void => {
    const m = Buffer.from(message, 'utf8');
    const head = Buffer.alloc(5);
    head[0] = 1;
    head.writeUInt32LE(m.length, 1);
    s.end(Buffer.concat([head, m]));
  };

  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    let rank = -1;
    s.on('data', (chunk: Buffer) => {
      if (rank >= 0) {
        // after the id: the acknowledgement
        if (chunk.includes(ACK) && joined.get(rank) === s) {
          acked.add(rank);
          if (acked.size === N - 1) finish();
        }
        return;
      }
      buf = Buffer.concat([buf, chunk]);
      if (buf.length < HELLO_BYTES) return;
      const magic = buf.readUInt32LE(0), version = buf.readUInt32LE(4), r = buf.readUInt32LE(8), n = buf.readUInt32LE(12);
      if (magic !== MAGIC || version !== VERSION) return refuse(s, `rendezvous at ${where}: not a lightning-moe rank (or protocol version ${version} ≠ ${VERSION})`);
      if (n !== N) return refuse(s, `rendezvous at ${where}: rank ${r} says world size ${n}, rank 0 has ${N}`);
      if (r < 1 || r >= N) return refuse(s, `rendezvous at ${where}: rank ${r} is not in [1, ${N}) (rank 0 is the host)`);
      if (joined.has(r)) return refuse(s, `rendezvous at ${where}: rank ${r} joined twice`);
      rank = r;
      joined.set(r, s);
      s.on('close', () => {
        if (!settled && !acked.has(r) && joined.get(r) === s) joined.delete(r); // it may reconnect
      });
      if (joined.size === N - 1) {
        const msg = Buffer.concat([Buffer.from([0]), id]);
        for (const peer of joined.values()) peer.write(msg);
      }
    });
  });

  return {
    port,
    done,
    close: () => finish(new RendezvousError(`rendezvous at ${where} was closed`)),
  };
}

/** Ranks ≥ 1: connects to rank 0 (retrying until it listens), sends the rank, waits for the id and acknowledges it. */
export async function joinRendezvous(o: RendezvousOptions): Promise<Buffer> {
  validate(o);
  if (o.rank === 0) throw new RendezvousError('joinRendezvous is for ranks ≥ 1; rank 0 listens', 'INVALID_ARGUMENT');
  const where = `${o.address}:${o.port}`;
  const timeoutMs = o.timeoutMs ?? 300_000;
  const deadline = Date.now() + timeoutMs;
  const timeout = (): RendezvousError =>
    new RendezvousError(`rendezvous at ${where} timed out after ${timeoutMs} ms: rank ${o.rank} of ${o.worldSize} did not receive the id from rank 0`);
  const hello = Buffer.alloc(HELLO_BYTES);
  hello.writeUInt32LE(MAGIC, 0);
  hello.writeUInt32LE(VERSION, 4);
  hello.writeUInt32LE(o.rank, 8);
  hello.writeUInt32LE(o.worldSize, 12);

  for (;;) {
    const left = deadline - Date.now();
    if (left <= 0) throw timeout();
    const r = await attemptJoin(o.address, o.port, hello, left);
    if (r.kind === 'id') return r.id;
    if (r.kind === 'refused') throw new RendezvousError(r.message, 'INVALID_ARGUMENT');
    if (r.kind === 'timeout') throw timeout();
    // not listening yet / connection dropped before the id: retry shortly
    await new Promise((res) => setTimeout(res, Math.min(100, Math.max(0, deadline - Date.now()))));
  }
}

type Attempt = { kind: 'id'; id: Buffer } | { kind: 'refused'; message: string } | { kind: 'retry' } | { kind: 'timeout' };

function attemptJoin(address: string, port: number, hello: Buffer, waitMs: number): Promise<Attempt> {
  return new Promise((resolve) => {
    let done = false;
    const s = net.connect({ host: address, port });
    const end = (a: Attempt): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (a.kind === 'id') s.end(Buffer.from([ACK]));
      else s.destroy();
      resolve(a);
    };
    const timer = setTimeout(() => end({ kind: 'timeout' }), waitMs);
    let buf = Buffer.alloc(0);
    s.on('connect', () => s.write(hello));
    s.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf[0] === 0 && buf.length >= 1 + UNIQUE_ID_BYTES) end({ kind: 'id', id: Buffer.from(buf.subarray(1, 1 + UNIQUE_ID_BYTES)) });
      else if (buf[0] === 1 && buf.length >= 5) {
        const len = buf.readUInt32LE(1);
        if (buf.length >= 5 + len) end({ kind: 'refused', message: buf.subarray(5, 5 + len).toString('utf8') });
      } else if (buf.length > 0 && buf[0] !== 0 && buf[0] !== 1) end({ kind: 'refused', message: `rendezvous at ${address}:${port}: unexpected reply from rank 0` });
    });
    s.on('error', () => end({ kind: 'retry' }));
    s.on('close', () => end({ kind: 'retry' }));
  });
}
