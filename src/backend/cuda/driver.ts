/**
 * The CUDA driver API through koffi: one context on one device, one compute stream, memory, events, modules,
 * kernel launches and stream capture into CUDA graphs. Every call goes through `check()`, which turns a non-zero
 * CUresult into a CudaError naming the call ("cuMemAlloc_v2: CUDA_ERROR_OUT_OF_MEMORY (out of memory)").
 *
 * Pointers are BigInt in koffi 3; device pointers are handled as `bigint` throughout.
 */

import koffi from 'koffi';
import { CudaError } from './errors.js';
import { bindFunctions, loadLibrary, type KoffiLib, type NativeFn } from './libraries.js';

export type DevicePtr = bigint;
type Handle = bigint;

/** CU_DEVICE_ATTRIBUTE_* values used here. */
const ATTR = {
  MAX_THREADS_PER_BLOCK: 1,
  MULTIPROCESSOR_COUNT: 16,
  L2_CACHE_SIZE: 38,
  COMPUTE_CAPABILITY_MAJOR: 75,
  COMPUTE_CAPABILITY_MINOR: 76,
  MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: 97,
} as const;

const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8;
const CU_STREAM_NON_BLOCKING = 1;
const CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1;

type Fn = NativeFn;

/** The driver functions, bound once per process. */
class DriverApi {
  readonly f: Record<string, Fn>;
  constructor() {
    this.f = bindFunctions(
      loadLibrary('cuda'),
      [
        'int cuInit(unsigned int flags)',
        'int cuDriverGetVersion(_Out_ int *version)',
        'int cuGetErrorName(int error, _Out_ const char **str)',
        'int cuGetErrorString(int error, _Out_ const char **str)',
        'int cuDeviceGetCount(_Out_ int *count)',
        'int cuDeviceGet(_Out_ int *device, int ordinal)',
        'int cuDeviceGetName(_Out_ uint8_t *name, int len, int dev)',
        'int cuDeviceGetAttribute(_Out_ int *value, int attrib, int dev)',
        'int cuDeviceTotalMem_v2(_Out_ size_t *bytes, int dev)',
        'int cuDevicePrimaryCtxRetain(_Out_ void **ctx, int dev)',
        'int cuDevicePrimaryCtxRelease_v2(int dev)',
        'int cuCtxSetCurrent(void *ctx)',
        'int cuCtxSynchronize()',
        'int cuMemGetInfo_v2(_Out_ size_t *free, _Out_ size_t *total)',
        'int cuMemAlloc_v2(_Out_ uint64_t *dptr, size_t bytes)',
        'int cuMemFree_v2(uint64_t dptr)',
        'int cuMemAllocHost_v2(_Out_ void **pp, size_t bytes)',
        'int cuMemFreeHost(void *p)',
        'int cuMemcpyHtoDAsync_v2(uint64_t dst, void *src, size_t bytes, void *stream)',
        'int cuMemcpyDtoHAsync_v2(void *dst, uint64_t src, size_t bytes, void *stream)',
        'int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t bytes, void *stream)',
        'int cuMemsetD8Async(uint64_t dst, uint8_t value, size_t count, void *stream)',
        'int cuMemsetD32Async(uint64_t dst, uint32_t value, size_t count, void *stream)',
        'int cuStreamCreate(_Out_ void **stream, unsigned int flags)',
        'int cuStreamSynchronize(void *stream)',
        'int cuStreamDestroy_v2(void *stream)',
        'int cuEventCreate(_Out_ void **event, unsigned int flags)',
        'int cuEventRecord(void *event, void *stream)',
        'int cuEventSynchronize(void *event)',
        'int cuEventDestroy_v2(void *event)',
        'int cuModuleLoadData(_Out_ void **module, void *image)',
        'int cuModuleGetFunction(_Out_ void **fn, void *module, const char *name)',
        'int cuModuleUnload(void *module)',
        'int cuFuncSetAttribute(void *fn, int attrib, int value)',
        'int cuStreamBeginCapture_v2(void *stream, int mode)',
        'int cuStreamEndCapture(void *stream, _Out_ void **graph)',
        'int cuGraphInstantiateWithFlags(_Out_ void **exec, void *graph, uint64_t flags)',
        'int cuGraphLaunch(void *exec, void *stream)',
        'int cuGraphExecDestroy(void *exec)',
        'int cuGraphDestroy(void *graph)',
        'int cuLaunchKernel(void *fn, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, unsigned int shmem, void *stream, void *params, void *extra)',
      ],
      [
        'int cuEventElapsedTime_v2(_Out_ float *ms, void *start, void *end)',
        'int cuEventElapsedTime(_Out_ float *ms, void *start, void *end)',
      ],
    );
  }
}

let api: DriverApi | undefined;
function driver(): DriverApi {
  api ??= new DriverApi();
  return api;
}

/** Throws a CudaError unless `status` is CUDA_SUCCESS. */
export function check(status: number, call: string): void {
  if (status === 0) return;
  const name = [''], text = [''];
  let described = `error ${status}`;
  try {
    if (driver().f.cuGetErrorName(status, name) === 0 && name[0]) described = String(name[0]);
    if (driver().f.cuGetErrorString(status, text) === 0 && text[0]) described += ` (${String(text[0])})`;
  } catch {
    /* keep the number */
  }
  throw new CudaError(`${call}: ${described}`, call, status);
}

/** libc malloc'd memory that never moves: kernel parameter blocks. */
const libc = (): KoffiLib => koffi.load('libc.so.6');
let mallocFn: Fn | undefined;
function hostMalloc(bytes: number): bigint {
  mallocFn ??= libc().func('void *malloc(size_t)');
  const p = mallocFn(bytes) as bigint | null;
  if (!p) throw new CudaError(`malloc(${bytes}) failed`, 'malloc');
  return p;
}

export interface DeviceInfo {
  readonly ordinal: number;
  readonly name: string;
  readonly computeCapability: readonly [number, number];
  /** NVRTC target, e.g. "sm_90a" on Hopper (arch-specific features such as wgmma need the "a" variant). */
  readonly arch: string;
  readonly multiprocessors: number;
  readonly totalMemoryBytes: number;
  readonly l2CacheBytes: number;
  readonly maxSharedMemoryPerBlockOptin: number;
  readonly driverVersion: number;
}

/** A kernel argument: a device pointer, or a scalar with its C type. */
export type KernelArg = bigint | { i32: number } | { u32: number } | { f32: number } | { i64: number | bigint } | { u64: number | bigint };

export class CudaContext {
  readonly info: DeviceInfo;
  readonly stream: Handle;
  private readonly ctx: Handle;
  private readonly f: Record<string, Fn>;
  /** Kernel parameter block: values at [0, 4096), the pointer array at [4096, 4096 + 8·64). */
  private readonly params: bigint;
  private readonly paramView: DataView;
  private capturing = false;

  private constructor(ordinal: number) {
    this.f = driver().f;
    check(this.f.cuInit(0), 'cuInit');
    const count = [0];
    check(this.f.cuDeviceGetCount(count), 'cuDeviceGetCount');
    if (count[0] === 0) throw new CudaError('no CUDA device found', 'cuDeviceGetCount', undefined, { hint: 'use --device cpu' });
    if (ordinal < 0 || ordinal >= count[0]) throw new CudaError(`CUDA device ${ordinal} does not exist (${count[0]} present)`, 'cuDeviceGet');
    const dev = [0];
    check(this.f.cuDeviceGet(dev, ordinal), 'cuDeviceGet');
    const ctx: (Handle | null)[] = [null];
    check(this.f.cuDevicePrimaryCtxRetain(ctx, dev[0]), 'cuDevicePrimaryCtxRetain');
    this.ctx = ctx[0]!;
    check(this.f.cuCtxSetCurrent(this.ctx), 'cuCtxSetCurrent');
    const attr = (a: number): number => {
      const v = [0];
      check(this.f.cuDeviceGetAttribute(v, a, dev[0]), 'cuDeviceGetAttribute');
      return v[0];
    };
    const nameBuf = new Uint8Array(256);
    check(this.f.cuDeviceGetName(nameBuf, 256, dev[0]), 'cuDeviceGetName');
    const total = [0];
    check(this.f.cuDeviceTotalMem_v2(total, dev[0]), 'cuDeviceTotalMem');
    const ver = [0];
    check(this.f.cuDriverGetVersion(ver), 'cuDriverGetVersion');
    const major = attr(ATTR.COMPUTE_CAPABILITY_MAJOR), minor = attr(ATTR.COMPUTE_CAPABILITY_MINOR);
    this.info = {
      ordinal,
      name: Buffer.from(nameBuf).toString('utf8').replace(/\0.*$/s, ''),
      computeCapability: [major, minor],
      arch: `sm_${major}${minor}${major === 9 && minor === 0 ? 'a' : ''}`,
      multiprocessors: attr(ATTR.MULTIPROCESSOR_COUNT),
      totalMemoryBytes: Number(total[0]),
      l2CacheBytes: attr(ATTR.L2_CACHE_SIZE),
      maxSharedMemoryPerBlockOptin: attr(ATTR.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
      driverVersion: ver[0],
    };
    const s: (Handle | null)[] = [null];
    check(this.f.cuStreamCreate(s, CU_STREAM_NON_BLOCKING), 'cuStreamCreate');
    this.stream = s[0]!;
    this.params = hostMalloc(4096 + 8 * 64);
    this.paramView = new DataView(koffi.view(this.params, 4096 + 8 * 64));
  }

  private static instances = new Map<number, CudaContext>();

  /** The process-wide context of device `ordinal` (created on first use). */
  static get(ordinal = 0): CudaContext {
    let c = CudaContext.instances.get(ordinal);
    if (!c) {
      c = new CudaContext(ordinal);
      CudaContext.instances.set(ordinal, c);
    }
    return c;
  }

  /** Makes this context current on the calling thread. */
  activate(): void {
    check(this.f.cuCtxSetCurrent(this.ctx), 'cuCtxSetCurrent');
  }

  // ---- memory ----
  memInfo(): { free: number; total: number } {
    const free = [0], total = [0];
    check(this.f.cuMemGetInfo_v2(free, total), 'cuMemGetInfo');
    return { free: Number(free[0]), total: Number(total[0]) };
  }

  /** Raw device allocation; returns undefined when the device is out of memory (the allocator retries). */
  tryMalloc(bytes: number): DevicePtr | undefined {
    const p = [0n];
    const st = this.f.cuMemAlloc_v2(p, Math.max(bytes, 1));
    if (st === 2 /* CUDA_ERROR_OUT_OF_MEMORY */) return undefined;
    check(st, 'cuMemAlloc');
    return BigInt(p[0]);
  }

  free(ptr: DevicePtr): void {
    check(this.f.cuMemFree_v2(ptr), 'cuMemFree');
  }

  /** Page-locked host memory and a view of it (for fast, asynchronous copies). */
  mallocHost(bytes: number): { ptr: bigint; buffer: ArrayBuffer } {
    const p: (bigint | null)[] = [null];
    check(this.f.cuMemAllocHost_v2(p, bytes), 'cuMemAllocHost');
    return { ptr: p[0]!, buffer: koffi.view(p[0]!, bytes) };
  }

  freeHost(ptr: bigint): void {
    check(this.f.cuMemFreeHost(ptr), 'cuMemFreeHost');
  }

  /** Asynchronous host → device copy on the compute stream. `src` is a typed array or a pinned host pointer. */
  copyHtoD(dst: DevicePtr, src: ArrayBufferView | bigint, bytes: number): void {
    check(this.f.cuMemcpyHtoDAsync_v2(dst, src, bytes, this.stream), 'cuMemcpyHtoDAsync');
  }

  /** Device → host copy, waiting for it (and everything queued before it) to finish. */
  copyDtoH(dst: ArrayBufferView | bigint, src: DevicePtr, bytes: number): void {
    check(this.f.cuMemcpyDtoHAsync_v2(dst, src, bytes, this.stream), 'cuMemcpyDtoHAsync');
    this.synchronize();
  }

  copyDtoD(dst: DevicePtr, src: DevicePtr, bytes: number): void {
    if (bytes > 0) check(this.f.cuMemcpyDtoDAsync_v2(dst, src, bytes, this.stream), 'cuMemcpyDtoDAsync');
  }

  memsetD8(dst: DevicePtr, value: number, bytes: number): void {
    if (bytes > 0) check(this.f.cuMemsetD8Async(dst, value, bytes, this.stream), 'cuMemsetD8Async');
  }

  memsetD32(dst: DevicePtr, value: number, count: number): void {
    if (count > 0) check(this.f.cuMemsetD32Async(dst, value >>> 0, count, this.stream), 'cuMemsetD32Async');
  }

  synchronize(): void {
    check(this.f.cuStreamSynchronize(this.stream), 'cuStreamSynchronize');
  }

  // ---- modules and launches ----
  loadModule(image: Uint8Array): Handle {
    const m: (Handle | null)[] = [null];
    check(this.f.cuModuleLoadData(m, image), 'cuModuleLoadData');
    return m[0]!;
  }

  getFunction(module: Handle, name: string): Handle {
    const fn: (Handle | null)[] = [null];
    check(this.f.cuModuleGetFunction(fn, module, name), `cuModuleGetFunction(${name})`);
    return fn[0]!;
  }

  setMaxDynamicSharedMemory(fn: Handle, bytes: number, name: string): void {
    check(this.f.cuFuncSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes), `cuFuncSetAttribute(${name}, ${bytes} B shared)`);
  }

  /** Launches `fn` on the compute stream. Arguments are packed into a fixed native parameter block. */
  launch(fn: Handle, name: string, grid: readonly number[], block: readonly number[], sharedBytes: number, args: readonly KernelArg[]): void {
    if (args.length > 64) throw new CudaError(`${name}: too many kernel arguments (${args.length})`, 'cuLaunchKernel');
    const v = this.paramView;
    let off = 0;
    for (let i = 0; i < args.length; i++) {
      const a = args[i];
      off = (off + 7) & ~7;
      if (typeof a === 'bigint') v.setBigUint64(off, a, true);
      else if ('i32' in a) v.setInt32(off, a.i32, true);
      else if ('u32' in a) v.setUint32(off, a.u32 >>> 0, true);
      else if ('f32' in a) v.setFloat32(off, a.f32, true);
      else if ('i64' in a) v.setBigInt64(off, BigInt(a.i64), true);
      else v.setBigUint64(off, BigInt(a.u64), true);
      v.setBigUint64(4096 + 8 * i, this.params + BigInt(off), true);
      off += 8;
    }
    const [gx, gy = 1, gz = 1] = grid;
    const [bx, by = 1, bz = 1] = block;
    if (gx <= 0 || gy <= 0 || gz <= 0) return; // nothing to do
    check(this.f.cuLaunchKernel(fn, gx, gy, gz, bx, by, bz, sharedBytes, this.stream, this.params + 4096n, null), `cuLaunchKernel(${name})`);
  }

  // ---- events ----
  createEvent(): Handle {
    const e: (Handle | null)[] = [null];
    check(this.f.cuEventCreate(e, 0), 'cuEventCreate');
    return e[0]!;
  }

  record(event: Handle): void {
    check(this.f.cuEventRecord(event, this.stream), 'cuEventRecord');
  }

  /** Milliseconds between two recorded events (waits for the second). */
  elapsedMs(start: Handle, end: Handle): number {
    check(this.f.cuEventSynchronize(end), 'cuEventSynchronize');
    const ms = [0];
    const fn = this.f.cuEventElapsedTime_v2 ?? this.f.cuEventElapsedTime;
    check(fn(ms, start, end), 'cuEventElapsedTime');
    return ms[0];
  }

  /** Waits until `event` (recorded earlier; or never recorded) has completed. */
  synchronizeEvent(event: Handle): void {
    check(this.f.cuEventSynchronize(event), 'cuEventSynchronize');
  }

  destroyEvent(event: Handle): void {
    check(this.f.cuEventDestroy_v2(event), 'cuEventDestroy');
  }

  // ---- graphs ----
  get isCapturing(): boolean {
    return this.capturing;
  }

  /** Records everything `body` enqueues on the compute stream into an executable graph (nothing runs). */
  capture(body: () => void): CudaGraph {
    check(this.f.cuStreamBeginCapture_v2(this.stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), 'cuStreamBeginCapture');
    this.capturing = true;
    let graph: Handle | null = null;
    try {
      body();
    } finally {
      this.capturing = false;
      const g: (Handle | null)[] = [null];
      const st = this.f.cuStreamEndCapture(this.stream, g);
      graph = g[0];
      check(st, 'cuStreamEndCapture');
    }
    const exec: (Handle | null)[] = [null];
    check(this.f.cuGraphInstantiateWithFlags(exec, graph, 0), 'cuGraphInstantiateWithFlags');
    return new CudaGraph(this, graph!, exec[0]!, this.f);
  }
}

export class CudaGraph {
  private destroyed = false;
  constructor(
    private readonly ctx: CudaContext,
    private readonly graph: Handle,
    private readonly exec: Handle,
    private readonly f: Record<string, Fn>,
  ) {}

  launch(): void {
    check(this.f.cuGraphLaunch(this.exec, this.ctx.stream), 'cuGraphLaunch');
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    check(this.f.cuGraphExecDestroy(this.exec), 'cuGraphExecDestroy');
    check(this.f.cuGraphDestroy(this.graph), 'cuGraphDestroy');
  }
}
