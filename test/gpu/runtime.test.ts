/**
 * The CUDA runtime from TypeScript: device properties, the caching allocator (no cuMemAlloc on reuse), the NVRTC
 * disk cache (a second compile is a cache hit), compile errors carrying the program log, CUDA graph capture and
 * replay (a captured step replays with new metadata), events, and clear errors for bad requests.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { getGpu, Rng, randn, bf16Values } from '../helpers/gpu.js';

const { gpu, reason } = await getGpu();
const skip = gpu ? false : reason;

test('device properties: a Hopper GPU gets the sm_90a target', { skip }, async () => {
  const { CudaBackend } = await import('../../src/backend/cuda/cuda-backend.js');
  const b = gpu!.backend as InstanceType<typeof CudaBackend>;
  const info = b.ctx.info;
  assert.ok(info.multiprocessors > 0 && info.totalMemoryBytes > 1e9, JSON.stringify(info));
  if (info.computeCapability[0] === 9 && info.computeCapability[1] === 0) assert.equal(info.arch, 'sm_90a');
  console.log(`# device: ${info.name}, ${info.arch}, ${info.multiprocessors} SMs, ${(info.totalMemoryBytes / 2 ** 30).toFixed(0)} GiB, driver ${info.driverVersion}`);
});

test('caching allocator reuses freed blocks without new device allocations', { skip }, async () => {
  const { CudaBackend } = await import('../../src/backend/cuda/cuda-backend.js');
  const b = gpu!.backend as InstanceType<typeof CudaBackend>;
  const t1 = b.alloc([1 << 20], 'f32');
  b.free(t1);
  const before = b.allocator.stats().deviceAllocations;
  for (let i = 0; i < 100; i++) b.free(b.alloc([1 << 20], 'f32'));
  assert.equal(b.allocator.stats().deviceAllocations, before, 'no cuMemAlloc for reused sizes');
});

test('NVRTC: compile errors carry the log; the disk cache serves the second compile', { skip }, async () => {
  const { compileCubin } = await import('../../src/backend/cuda/nvrtc.js');
  const { NvrtcCompileError } = await import('../../src/backend/cuda/errors.js');
  const { CudaBackend } = await import('../../src/backend/cuda/cuda-backend.js');
  const arch = (gpu!.backend as InstanceType<typeof CudaBackend>).ctx.info.arch;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lmoe-nvrtc-'));
  const saved = process.env.LMOE_KERNEL_CACHE;
  process.env.LMOE_KERNEL_CACHE = dir;
  try {
    const src = 'extern "C" __global__ void k(float* x) { x[threadIdx.x] *= 2.f; }';
    const a = compileCubin({ name: 't.cu', source: src, headers: {}, arch });
    const b2 = compileCubin({ name: 't.cu', source: src, headers: {}, arch });
    assert.equal(a.cached, false);
    assert.equal(b2.cached, true);
    assert.deepEqual(b2.cubin, a.cubin);
    assert.throws(
      () => compileCubin({ name: 'bad.cu', source: 'extern "C" __global__ void k(float* x) { undeclared_thing(x); }', headers: {}, arch }),
      (e: unknown) => e instanceof NvrtcCompileError && /bad\.cu/.test(e.message) && /undeclared_thing/.test(e.log),
    );
  } finally {
    if (saved === undefined) delete process.env.LMOE_KERNEL_CACHE;
    else process.env.LMOE_KERNEL_CACHE = saved;
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('graphs: a captured step replays with fresh metadata (scratch uploads) and runs exactly once per call', { skip }, async () => {
  const { CudaBackend } = await import('../../src/backend/cuda/cuda-backend.js');
  const b = gpu!.backend as InstanceType<typeof CudaBackend>;
  const rng = new Rng(9);
  const V = 1000, D = 256, T = 4;
  const table = bf16Values(randn(rng, V * D));
  const tg = b.upload([V, D], 'bf16', table);
  const acc = b.zeros([T, D], 'bf16');
  const x = b.alloc([T, D], 'bf16');
  const expectAcc = new Float32Array(T * D);
  const bf = (v: number) => bf16Values(Float32Array.of(v))[0];
  for (let step = 0; step < 5; step++) {
    const ids = Int32Array.from({ length: T }, () => Math.floor(rng.next() * V));
    b.runGraph('test-step', () => {
      b.beginStep();
      b.embedding(x, tg, b.scratchUpload([T], 'i32', ids));
      b.residualAdd(acc, acc, 1, x, 1); // acc += x: a double execution would be visible
    });
    for (let t = 0; t < T; t++) for (let d = 0; d < D; d++) expectAcc[t * D + d] = bf(expectAcc[t * D + d] + table[ids[t] * D + d]);
    assert.deepEqual(Array.from(b.toFloat32(x)), Array.from({ length: T * D }, (_, i) => table[ids[Math.floor(i / D)] * D + (i % D)]), `step ${step}: embedding`);
    assert.deepEqual(Array.from(b.toFloat32(acc)), Array.from(expectAcc), `step ${step}: accumulated exactly once per call`);
  }
});

test('events time a kernel; bad launches and shapes give clear errors', { skip }, async () => {
  const { CudaBackend } = await import('../../src/backend/cuda/cuda-backend.js');
  const b = gpu!.backend as InstanceType<typeof CudaBackend>;
  const t = b.upload([1 << 20], 'bf16', new Float32Array(1 << 20).fill(1.5));
  const e0 = b.ctx.createEvent(), e1 = b.ctx.createEvent();
  b.ctx.record(e0);
  b.siluInPlace(t);
  b.ctx.record(e1);
  const ms = b.ctx.elapsedMs(e0, e1);
  assert.ok(ms >= 0 && ms < 100, `elapsed ${ms} ms`);
  assert.throws(() => b.rmsNorm(b.alloc([3, 10], 'bf16'), b.alloc([3, 10], 'bf16'), b.alloc([12], 'bf16'), 1e-5), /expected shape/);
  assert.throws(() => b.kernels.get('elementwise', 'no_such_kernel'), /cuModuleGetFunction\(no_such_kernel\)/);
});
