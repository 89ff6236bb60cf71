/**
 * A caching device allocator: freed blocks go back to a pool keyed by their rounded size and are reused, so
 * steady-state forward passes make no cuMemAlloc calls (and none can happen while a CUDA graph is captured).
 * Sizes round up to 512 B below 1 MiB and to 2 MiB above; on OOM the pool is released and the allocation retried.
 */

import type { CudaContext, DevicePtr } from './driver.js';
import { OutOfMemoryError } from './errors.js';
import { InternalError } from '../../util/errors.js';

export interface AllocatorStats {
  /** Bytes handed out and not yet freed. */
  readonly usedBytes: number;
  /** Bytes held by the pool for reuse. */
  readonly cachedBytes: number;
  readonly peakUsedBytes: number;
  readonly deviceAllocations: number;
}

export class CachingAllocator {
  private readonly pool = new Map<number, DevicePtr[]>();
  private readonly sizes = new Map<DevicePtr, number>();
  private used = 0;
  private cached = 0;
  private peak = 0;
  private mallocs = 0;

  constructor(private readonly ctx: CudaContext) {}

  static roundSize(bytes: number): number {
    const b = Math.max(bytes, 1);
    if (b <= 1 << 20) return Math.ceil(b / 512) * 512;
    return Math.ceil(b / (2 << 20)) * (2 << 20);
  }

  alloc(bytes: number): DevicePtr {
    const size = CachingAllocator.roundSize(bytes);
    const free = this.pool.get(size);
    let ptr = free?.pop();
    if (ptr !== undefined) {
      this.cached -= size;
    } else {
      if (this.ctx.isCapturing) throw new InternalError(`device allocation of ${size} bytes during CUDA graph capture`);
      ptr = this.ctx.tryMalloc(size);
      if (ptr === undefined) {
        this.releaseCache();
        ptr = this.ctx.tryMalloc(size);
        if (ptr === undefined) throw new OutOfMemoryError(size, this.used, this.ctx.memInfo().free);
      }
      this.mallocs++;
    }
    this.sizes.set(ptr, size);
    this.used += size;
    this.peak = Math.max(this.peak, this.used);
    return ptr;
  }

  free(ptr: DevicePtr): void {
    const size = this.sizes.get(ptr);
    if (size === undefined) throw new InternalError(`free of an unknown device pointer 0x${ptr.toString(16)}`);
    this.sizes.delete(ptr);
    this.used -= size;
    this.cached += size;
    let list = this.pool.get(size);
    if (!list) this.pool.set(size, (list = []));
    list.push(ptr);
  }

  /** Returns every cached block to the driver (after synchronizing: a block may still be in use by queued work). */
  releaseCache(): void {
    this.ctx.synchronize();
    for (const list of this.pool.values()) for (const p of list) this.ctx.free(p);
    this.pool.clear();
    this.cached = 0;
  }

  stats(): AllocatorStats {
    return { usedBytes: this.used, cachedBytes: this.cached, peakUsedBytes: this.peak, deviceAllocations: this.mallocs };
  }
}
