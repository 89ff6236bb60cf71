/**
 * NCCL through koffi: collectives between processes, one process per GPU (issue 8). libnccl.so.2 is found like the
 * CUDA libraries (src/backend/cuda/libraries.ts): $CUDA_HOME, $LD_LIBRARY_PATH, the dynamic loader's own search,
 * /usr/local/cuda/lib64, then the nvidia-nccl-cu12 / -cu13 pip wheels (site-packages/nvidia/nccl/lib). $LMOE_NCCL_LIB,
 * when set, names the file to load and nothing else is tried.
 *
 * Every call runs on device pointers (`bigint`) and a CUDA stream (CudaContext.stream); collectives are enqueued
 * asynchronously like kernels. Every ncclResult_t other than ncclSuccess becomes an NcclError naming the call.
 *
 * The ncclUniqueId (NCCL_UNIQUE_ID_BYTES = 128 bytes) is created by rank 0 (`ncclUniqueId()`) and shared with the
 * other ranks by the host rendezvous (rendezvous.ts) before `NcclCommunicator.init`.
 */

import fs from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';
import { bindFunctions, candidateDirs, wheelLibDirs, type KoffiLib, type NativeFn } from '../backend/cuda/libraries.js';
import type { DevicePtr } from '../backend/cuda/driver.js';
import { LightningMoeError, type ErrorOptions } from '../util/errors.js';

export const NCCL_UNIQUE_ID_BYTES = 128;

/** An NCCL call failed, or libnccl could not be loaded. `status` is the ncclResult_t. */
export class NcclError extends LightningMoeError {
  constructor(
    message: string,
    readonly call: string,
    readonly status?: number,
    options: ErrorOptions = {},
  ) {
    super('CUDA', message, options);
  }
}

/** ncclDataType_t. */
export const NcclDataType = {
  int8: 0,
  uint8: 1,
  int32: 2,
  uint32: 3,
  int64: 4,
  uint64: 5,
  f16: 6,
  f32: 7,
  f64: 8,
  bf16: 9,
} as const;
export type NcclDType = keyof typeof NcclDataType;

/** Bytes per element of each data type. */
export const NCCL_DTYPE_BYTES: Record<NcclDType, number> = {
  int8: 1, uint8: 1, int32: 4, uint32: 4, int64: 8, uint64: 8, f16: 2, f32: 4, f64: 8, bf16: 2,
};

/** ncclRedOp_t (the built-in ones). */
export const NcclRedOp = { sum: 0, prod: 1, max: 2, min: 3, avg: 4 } as const;
export type NcclReduction = keyof typeof NcclRedOp;

/** ncclResult_t names. */
const RESULT: Record<number, string> = {
  0: 'ncclSuccess',
  1: 'ncclUnhandledCudaError',
  2: 'ncclSystemError',
  3: 'ncclInternalError',
  4: 'ncclInvalidArgument',
  5: 'ncclInvalidUsage',
  6: 'ncclRemoteError',
  7: 'ncclInProgress',
};
const NCCL_IN_PROGRESS = 7;

const LIB_NAMES = ['libnccl.so.2', 'libnccl.so'];
const WHEEL_PACKAGES = ['nccl', 'cu13', 'cu12'];

let api: { lib: KoffiLib; f: Record<string, NativeFn>; uniqueIdType: ReturnType<typeof koffi.struct> } | undefined;

/** Loads libnccl (once per process) or throws an NcclError saying where it looked. */
function loadNccl(): KoffiLib {
  const tried: string[] = [];
  const attempt = (file: string): KoffiLib | undefined => {
    try {
      return koffi.load(file);
    } catch (e) {
      tried.push(`${file} (${e instanceof Error ? e.message.split('\n')[0] : String(e)})`);
      return undefined;
    }
  };
  const explicit = process.env.LMOE_NCCL_LIB;
  if (explicit) {
    const lib = attempt(explicit);
    if (lib) return lib;
    throw new NcclError(`cannot load LMOE_NCCL_LIB=${explicit}: ${tried[0] ?? ''}`, 'dlopen(libnccl.so.2)');
  }
  const inDirs = (dirs: string[]): KoffiLib | undefined => {
    for (const dir of dirs) {
      for (const n of LIB_NAMES) {
        const f = path.join(dir, n);
        if (fs.existsSync(f)) {
          const lib = attempt(f);
          if (lib) return lib;
        }
      }
    }
    return undefined;
  };
  const fromDirs = inDirs(candidateDirs('other'));
  if (fromDirs) return fromDirs;
  for (const n of LIB_NAMES) {
    const lib = attempt(n); // the dynamic loader's own search
    if (lib) return lib;
  }
  const fromWheels = inDirs(wheelLibDirs(WHEEL_PACKAGES));
  if (fromWheels) return fromWheels;
  throw new NcclError('cannot load NCCL (libnccl.so.2)', 'dlopen(libnccl.so.2)', undefined, {
    hint: 'install NCCL (the libnccl2 package or `pip install nvidia-nccl-cu12`), or set LMOE_NCCL_LIB / LD_LIBRARY_PATH',
  });
}

function nccl(): NonNullable<typeof api> {
  if (api) return api;
  const lib = loadNccl();
  // Passed by value to ncclCommInitRank: { char internal[128]; }.
  const uniqueIdType = koffi.struct('lmoe_ncclUniqueId', { internal: koffi.array('uint8_t', NCCL_UNIQUE_ID_BYTES, 'Buffer') });
  const f = bindFunctions(
    lib,
    [
      'int ncclGetVersion(_Out_ int *version)',
      'int ncclGetUniqueId(void *uniqueId)',
      'int ncclCommInitRank(_Out_ void **comm, int nranks, lmoe_ncclUniqueId commId, int rank)',
      'int ncclCommDestroy(void *comm)',
      'int ncclCommAbort(void *comm)',
      'int ncclCommGetAsyncError(void *comm, _Out_ int *asyncError)',
      'int ncclCommCount(void *comm, _Out_ int *count)',
      'int ncclCommUserRank(void *comm, _Out_ int *rank)',
      'int ncclCommCuDevice(void *comm, _Out_ int *device)',
      'const char *ncclGetErrorString(int result)',
      'int ncclAllReduce(uint64_t sendbuff, uint64_t recvbuff, size_t count, int datatype, int op, void *comm, void *stream)',
      'int ncclAllGather(uint64_t sendbuff, uint64_t recvbuff, size_t sendcount, int datatype, void *comm, void *stream)',
      'int ncclReduceScatter(uint64_t sendbuff, uint64_t recvbuff, size_t recvcount, int datatype, int op, void *comm, void *stream)',
      'int ncclBroadcast(uint64_t sendbuff, uint64_t recvbuff, size_t count, int datatype, int root, void *comm, void *stream)',
      'int ncclSend(uint64_t sendbuff, size_t count, int datatype, int peer, void *comm, void *stream)',
      'int ncclRecv(uint64_t recvbuff, size_t count, int datatype, int peer, void *comm, void *stream)',
      'int ncclGroupStart()',
      'int ncclGroupEnd()',
    ],
    [
      // NCCL ≥ 2.13: the last error message of a communicator (more detail than ncclGetErrorString).
      'const char *ncclGetLastError(void *comm)',
    ],
  );
  api = { lib, f, uniqueIdType };
  return api;
}

function describe(status: number): string {
  let text = '';
  try {
    text = String(nccl().f.ncclGetErrorString(status) ?? '');
  } catch {
    /* keep the name */
  }
  const name = RESULT[status] ?? `ncclResult ${status}`;
  return text ? `${name} (${text})` : name;
}

function check(status: number, call: string, comm?: bigint | null): void {
  if (status === 0) return;
  let last = '';
  if (comm !== undefined && nccl().f.ncclGetLastError) {
    try {
      last = String(nccl().f.ncclGetLastError(comm) ?? '');
    } catch {
      /* none */
    }
  }
  throw new NcclError(`${call}: ${describe(status)}${last ? `: ${last}` : ''}`, call, status);
}

/** Whether libnccl can be loaded here (never throws). */
export function ncclAvailable(): boolean {
  try {
    nccl();
    return true;
  } catch {
    return false;
  }
}

/** NCCL's version code, e.g. 22105 for 2.21.5 (major·10000 + minor·100 + patch since 2.9). */
export function ncclVersion(): number {
  const v = [0];
  check(nccl().f.ncclGetVersion(v), 'ncclGetVersion');
  return v[0];
}

/** "2.21.5" from a version code. */
export function formatNcclVersion(code: number): string {
  return code >= 10000
    ? `${Math.floor(code / 10000)}.${Math.floor(code / 100) % 100}.${code % 100}`
    : `${Math.floor(code / 1000)}.${Math.floor(code / 100) % 10}.${code % 100}`;
}

/** A new ncclUniqueId (128 bytes), to be created by rank 0 only and shared with every rank. */
export function ncclUniqueId(): Buffer {
  const id = Buffer.alloc(NCCL_UNIQUE_ID_BYTES);
  check(nccl().f.ncclGetUniqueId(id), 'ncclGetUniqueId');
  return id;
}

/** Runs `body` between ncclGroupStart and ncclGroupEnd (fused point-to-point / collective calls). */
export function ncclGroup<T>(body: () => T): T {
  check(nccl().f.ncclGroupStart(), 'ncclGroupStart');
  let result: T;
  try {
    result = body();
  } finally {
    check(nccl().f.ncclGroupEnd(), 'ncclGroupEnd');
  }
  return result;
}

/**
 * One rank's communicator. The CUDA context of this rank's device must be current on the calling thread when it is
 * created (CudaContext.get(device) makes it so); `stream` arguments are CUDA streams of that context
 * (CudaContext.stream). Counts are elements, not bytes.
 */
export class NcclCommunicator {
  private comm: bigint | null;

  private constructor(
    comm: bigint,
    readonly rank: number,
    readonly size: number,
  ) {
    this.comm = comm;
  }

  /**
   * ncclCommInitRank: blocks until all `size` ranks have called it with the same id (for size > 1 this blocks the
   * Node.js event loop; finish the rendezvous first).
   */
  static init(uniqueId: Uint8Array, rank: number, size: number): NcclCommunicator {
    if (uniqueId.byteLength !== NCCL_UNIQUE_ID_BYTES) {
      throw new NcclError(`ncclUniqueId must be ${NCCL_UNIQUE_ID_BYTES} bytes, got ${uniqueId.byteLength}`, 'ncclCommInitRank', 4);
    }
    if (!Number.isInteger(size) || size < 1 || !Number.isInteger(rank) || rank < 0 || rank >= size) {
      throw new NcclError(`bad rank ${rank} of ${size} ranks (want an integer 0 ≤ rank < size)`, 'ncclCommInitRank', 4);
    }
    const { f } = nccl();
    const out: (bigint | null)[] = [null];
    check(f.ncclCommInitRank(out, size, { internal: Buffer.from(uniqueId) }, rank), `ncclCommInitRank(rank ${rank} of ${size})`);
    return new NcclCommunicator(out[0]!, rank, size);
  }

  private handle(call: string): bigint {
    if (this.comm === null) throw new NcclError(`${call}: the communicator was destroyed`, call, 5);
    return this.comm;
  }

  /** The CUDA device ordinal this communicator runs on. */
  get device(): number {
    const d = [0];
    check(nccl().f.ncclCommCuDevice(this.handle('ncclCommCuDevice'), d), 'ncclCommCuDevice', this.comm);
    return d[0];
  }

  /** recv[i] = Σ_ranks send[i] (in place when send === recv). */
  allReduce(send: DevicePtr, recv: DevicePtr, count: number, dtype: NcclDType, op: NcclReduction, stream: bigint): void {
    const c = this.handle('ncclAllReduce');
    check(nccl().f.ncclAllReduce(send, recv, count, NcclDataType[dtype], NcclRedOp[op], c, stream), `ncclAllReduce(${count} ${dtype}, ${op})`, c);
  }

  /** In-place sum over all ranks. */
  allReduceSum(ptr: DevicePtr, count: number, dtype: NcclDType, stream: bigint): void {
    this.allReduce(ptr, ptr, count, dtype, 'sum', stream);
  }

  /** recv[r·count + i] = send_r[i]: `recv` holds size·count elements, rank order. */
  allGather(send: DevicePtr, recv: DevicePtr, count: number, dtype: NcclDType, stream: bigint): void {
    const c = this.handle('ncclAllGather');
    check(nccl().f.ncclAllGather(send, recv, count, NcclDataType[dtype], c, stream), `ncclAllGather(${count} ${dtype})`, c);
  }

  /** recv[i] = Σ_ranks send[rank·recvCount + i]: `send` holds size·recvCount elements. */
  reduceScatter(send: DevicePtr, recv: DevicePtr, recvCount: number, dtype: NcclDType, op: NcclReduction, stream: bigint): void {
    const c = this.handle('ncclReduceScatter');
    check(
      nccl().f.ncclReduceScatter(send, recv, recvCount, NcclDataType[dtype], NcclRedOp[op], c, stream),
      `ncclReduceScatter(${recvCount} ${dtype}, ${op})`,
      c,
    );
  }

  /** Copies `count` elements from `root`'s send buffer to every rank's recv buffer. */
  broadcast(send: DevicePtr, recv: DevicePtr, count: number, dtype: NcclDType, root: number, stream: bigint): void {
    const c = this.handle('ncclBroadcast');
    check(nccl().f.ncclBroadcast(send, recv, count, NcclDataType[dtype], root, c, stream), `ncclBroadcast(${count} ${dtype}, root ${root})`, c);
  }

  /** Point-to-point send; must be matched by `recv` on `peer` (group both sides with ncclGroup to avoid deadlock). */
  send(buf: DevicePtr, count: number, dtype: NcclDType, peer: number, stream: bigint): void {
    const c = this.handle('ncclSend');
    check(nccl().f.ncclSend(buf, count, NcclDataType[dtype], peer, c, stream), `ncclSend(${count} ${dtype} → rank ${peer})`, c);
  }

  recv(buf: DevicePtr, count: number, dtype: NcclDType, peer: number, stream: bigint): void {
    const c = this.handle('ncclRecv');
    check(nccl().f.ncclRecv(buf, count, NcclDataType[dtype], peer, c, stream), `ncclRecv(${count} ${dtype} ← rank ${peer})`, c);
  }

  /**
   * Sends `sendCount` elements to `sendPeer` and receives `recvCount` from `recvPeer` as one group (a ring shift,
   * or an exchange when the peers are the same).
   */
  sendRecv(
    sendBuf: DevicePtr, sendCount: number, sendPeer: number,
    recvBuf: DevicePtr, recvCount: number, recvPeer: number,
    dtype: NcclDType, stream: bigint,
  ): void {
    ncclGroup(() => {
      this.send(sendBuf, sendCount, dtype, sendPeer, stream);
      this.recv(recvBuf, recvCount, dtype, recvPeer, stream);
    });
  }

  /** ncclCommGetAsyncError: throws the pending asynchronous error (e.g. a peer failed), if any. */
  checkAsyncError(): void {
    const c = this.handle('ncclCommGetAsyncError');
    const e = [0];
    check(nccl().f.ncclCommGetAsyncError(c, e), 'ncclCommGetAsyncError', c);
    if (e[0] !== 0 && e[0] !== NCCL_IN_PROGRESS) check(e[0], 'NCCL asynchronous error', c);
  }

  /** Frees the communicator after its pending work (ncclCommDestroy). Idempotent. */
  destroy(): void {
    if (this.comm === null) return;
    const c = this.comm;
    this.comm = null;
    check(nccl().f.ncclCommDestroy(c), 'ncclCommDestroy');
  }

  /** Frees the communicator without waiting for pending work (after an error; ncclCommAbort). Idempotent. */
  abort(): void {
    if (this.comm === null) return;
    const c = this.comm;
    this.comm = null;
    check(nccl().f.ncclCommAbort(c), 'ncclCommAbort');
  }
}
