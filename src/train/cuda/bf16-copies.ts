/**
 * bf16 copies of fp32 master weights for the bf16 GEMMs (linear layers, experts). One copy per weight tensor
 * (keyed by address and size, so views of one flat parameter buffer each get their own), cast on first use and
 * recast on the next use after anything wrote an overlapping address range: the backend reports every output it
 * writes (adamw, write, copy, fillZero and every op's outputs) through `touched`, and every free through `freed`.
 */

import type { CudaBackend } from '../../backend/cuda/cuda-backend.js';
import type { DevicePtr } from '../../backend/cuda/driver.js';
import { gridFor, i64 } from '../../backend/cuda/runtime.js';
import type { CudaTTensor } from './tensor.js';

interface Entry {
  readonly start: bigint;
  readonly end: bigint;
  readonly bf: DevicePtr;
  stale: boolean;
}

export class Bf16Copies {
  private readonly entries = new Map<string, Entry>();

  constructor(private readonly be: CudaBackend) {}

  /** The bf16 copy of `w`, refreshed if stale. */
  get(w: CudaTTensor): DevicePtr {
    const key = `${w.ptr}:${w.size}`;
    let e = this.entries.get(key);
    if (!e) {
      e = { start: w.ptr, end: w.ptr + BigInt(w.bytes), bf: this.be.allocator.alloc(w.size * 2), stale: true };
      this.entries.set(key, e);
    }
    if (e.stale) {
      this.be.launch('elementwise', 'cast_f32_bf16', [gridFor(w.size)], [256], 0, [e.bf, w.ptr, i64(w.size)]);
      e.stale = false;
    }
    return e.bf;
  }

  /** `t` was (or is about to be) written: copies overlapping it are stale. */
  touched(t: CudaTTensor): void {
    if (this.entries.size === 0 || t.size === 0) return;
    const start = t.ptr, end = t.ptr + BigInt(t.bytes);
    for (const e of this.entries.values()) if (e.start < end && start < e.end) e.stale = true;
  }

  /** `t`'s storage is freed: copies overlapping it go (the allocator may hand the addresses to another tensor). */
  freed(t: CudaTTensor): void {
    if (this.entries.size === 0) return;
    const start = t.ptr, end = t.ptr + BigInt(Math.max(t.bytes, 1));
    for (const [k, e] of this.entries) {
      if (e.start < end && start < e.end) {
        this.be.allocator.free(e.bf);
        this.entries.delete(k);
      }
    }
  }

  clear(): void {
    for (const e of this.entries.values()) this.be.allocator.free(e.bf);
    this.entries.clear();
  }
}
