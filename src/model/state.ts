/**
 * Per-sequence caches (MODEL.md §13): an fp32 [H, Dh, Dh] lightning state per lightning layer and bf16-or-wider
 * [capacity, Hkv, Dh] K (post-RoPE) / V buffers per softmax layer, plus the sequence's position (tokens consumed).
 * The lightning state is fixed-size; the KV buffers grow by doubling (copying the valid rows) as the sequence does.
 */

import type { Backend, Tensor } from '../backend/backend.js';
import type { ModelConfig } from '../config/config.js';
import { DisposedError, assert } from '../util/errors.js';

export class SequenceState {
  /** Tokens consumed so far: the position of the next token. */
  position = 0;
  /** Lightning state by layer index (undefined for softmax layers). */
  readonly lightning: (Tensor | undefined)[];
  /** KV buffers by layer index (undefined for lightning layers). */
  private readonly kv: ({ k: Tensor; v: Tensor } | undefined)[];
  private capacity = 0;
  private disposed = false;

  constructor(private readonly backend: Backend, private readonly config: ModelConfig, private readonly kvDType: 'f32' | 'bf16' = 'f32') {
    const { numHeads: H, headDim: Dh } = config;
    this.lightning = config.layerTypes.map((t) => (t === 'lightning' ? backend.zeros([H, Dh, Dh], 'f32') : undefined));
    this.kv = config.layerTypes.map(() => undefined);
  }

  /** The K/V buffers of softmax layer `layer` (call reserve() first). */
  kvFor(layer: number): { k: Tensor; v: Tensor } {
    const kv = this.kv[layer];
    assert(kv, `layer ${layer} has no KV cache (not a softmax layer, or reserve() was not called)`);
    return kv;
  }

  /** Makes room for `tokens` rows in every softmax layer's cache, keeping the rows [0, position). */
  reserve(tokens: number): void {
    this.ensureLive();
    if (tokens <= this.capacity) return;
    const capacity = Math.max(tokens, this.capacity * 2, 64);
    const { numKvHeads: Hkv, headDim: Dh } = this.config;
    const b = this.backend;
    for (let l = 0; l < this.kv.length; l++) {
      if (this.config.layerTypes[l] !== 'softmax') continue;
      const old = this.kv[l];
      const k = b.zeros([capacity, Hkv, Dh], this.kvDType), v = b.zeros([capacity, Hkv, Dh], this.kvDType);
      if (old && this.position > 0) {
        const rows = [this.position, Hkv, Dh];
        b.copy(b.view(k, rows), b.view(old.k, rows));
        b.copy(b.view(v, rows), b.view(old.v, rows));
      }
      if (old) {
        b.free(old.k);
        b.free(old.v);
      }
      this.kv[l] = { k, v };
    }
    this.capacity = capacity;
  }

  /** Copies the lightning state of layer `layer` to the host (fp32 [H, Dh, Dh]). */
  lightningState(layer: number): Float32Array {
    this.ensureLive();
    const s = this.lightning[layer];
    assert(s, `layer ${layer} is not a lightning layer`);
    return this.backend.toFloat32(s);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const s of this.lightning) if (s) this.backend.free(s);
    for (const kv of this.kv) {
      if (kv) {
        this.backend.free(kv.k);
        this.backend.free(kv.v);
      }
    }
  }

  private ensureLive(): void {
    if (this.disposed) throw new DisposedError('SequenceState');
  }
}
