/**
 * NCCL on one GPU with one rank: the id goes through the TCP rendezvous (world size 1 and, for the protocol, a
 * second listen on loopback), the communicator is created, and allReduce (sum, in and out of place), allGather,
 * reduceScatter and a self send/recv on device buffers of known random values return the input (one rank), then the
 * communicator is destroyed. Skips without a GPU or without libnccl.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CudaContext } from '../../src/backend/cuda/driver.js';
import { formatNcclVersion, NcclCommunicator, ncclAvailable, ncclUniqueId, ncclVersion } from '../../src/parallel/nccl.js';
import { listenRendezvous, rendezvous } from '../../src/parallel/rendezvous.js';

let ctx: CudaContext | undefined;
let skip: string | false = false;
if (process.env.LMOE_SKIP_GPU) skip = 'LMOE_SKIP_GPU is set';
else {
  try {
    ctx = CudaContext.get(0);
  } catch (e) {
    skip = `no usable CUDA device: ${(e as Error).message}`;
  }
  if (!skip && !ncclAvailable()) skip = 'libnccl.so.2 not found (set LMOE_NCCL_LIB or install nvidia-nccl-cu12)';
}

function randomF32(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32) * 2 - 1;
  }
  return out;
}

test('NCCL with one rank: rendezvous, allReduce / allGather / reduceScatter / sendRecv return the input, destroy', { skip }, async () => {
  const c = ctx!;
  c.activate();
  const version = ncclVersion();
  assert.ok(version >= 2000, `ncclGetVersion ${version}`);
  console.log(`NCCL ${formatNcclVersion(version)} on ${c.info.name}`);

  // The id through the rendezvous: world size 1 (no network) and a real listen, so both paths hand back NCCL's id.
  const id = await rendezvous({ rank: 0, worldSize: 1, address: '127.0.0.1', port: 0, createId: ncclUniqueId });
  assert.equal(id.length, 128);
  const server = await listenRendezvous({ rank: 0, worldSize: 1, address: '127.0.0.1', port: 0, createId: () => id });
  assert.deepEqual(await server.done, id);

  const comm = NcclCommunicator.init(id, 0, 1);
  assert.equal(comm.rank, 0);
  assert.equal(comm.size, 1);
  assert.equal(comm.device, 0);

  const n = 1 << 20, bytes = n * 4;
  const x = randomF32(n, 12345);
  const a = c.tryMalloc(bytes)!, b = c.tryMalloc(bytes)!;
  try {
    const read = (p: bigint): Float32Array => {
      const out = new Float32Array(n);
      c.copyDtoH(out, p, bytes);
      return out;
    };
    c.copyHtoD(a, x, bytes);
    c.memsetD8(b, 0xff, bytes);
    comm.allReduce(a, b, n, 'f32', 'sum', c.stream);
    assert.deepEqual(read(b), x, 'allReduce out of place');
    comm.allReduceSum(a, n, 'f32', c.stream);
    assert.deepEqual(read(a), x, 'allReduce in place');

    c.memsetD8(b, 0xff, bytes);
    comm.allGather(a, b, n, 'f32', c.stream);
    assert.deepEqual(read(b), x, 'allGather');

    c.memsetD8(b, 0xff, bytes);
    comm.reduceScatter(a, b, n, 'f32', 'sum', c.stream);
    assert.deepEqual(read(b), x, 'reduceScatter');

    // bf16 as raw 16-bit words: a sum over one rank is the identity
    c.memsetD8(b, 0xff, bytes);
    comm.allReduce(a, b, 2 * n, 'bf16', 'sum', c.stream);
    const bf = new Uint16Array(2 * n), xa = new Uint16Array(2 * n);
    c.copyDtoH(bf, b, bytes);
    c.copyDtoH(xa, a, bytes);
    assert.deepEqual(bf, xa, 'allReduce bf16');

    c.memsetD8(b, 0xff, bytes);
    comm.sendRecv(a, n, 0, b, n, 0, 'f32', c.stream);
    assert.deepEqual(read(b), x, 'send/recv to self');

    comm.checkAsyncError();
  } finally {
    c.synchronize();
    comm.destroy();
    comm.destroy(); // idempotent
    c.free(a);
    c.free(b);
  }
  assert.throws(() => comm.allReduceSum(a, n, 'f32', c.stream), /the communicator was destroyed/);
});

test('NcclCommunicator.init refuses a bad id or rank before calling NCCL', { skip }, () => {
  assert.throws(() => NcclCommunicator.init(new Uint8Array(64), 0, 1), /ncclUniqueId must be 128 bytes, got 64/);
  assert.throws(() => NcclCommunicator.init(new Uint8Array(128), 1, 1), /bad rank 1 of 1 ranks/);
});
