/**
 * The caches of MODEL.md §13, pooled so that many sequences can share one model (continuous batching):
 *
 *  - Lightning state slots: one fp32 [H, Dh, Dh] state per lightning layer per slot. A sequence holds a slot for its
 *    whole life; the state is fixed-size, so a slot is all a lightning layer ever needs however long the sequence.
 *    Slots are allocated on first use, reused after release and zeroed when handed out.
 *  - A paged KV cache for the softmax layers: per layer, K and V pools of [blocks · KV_BLOCK_SIZE, Hkv, Dh] shared by
 *    every sequence, and per sequence a block table (see AttentionSegment). Blocks come from one free list, so
 *    memory follows the tokens actually held, with no per-sequence over-allocation beyond one partial block.
 *
 * The KV pools start at `initialKvBlocks` and, when `maxKvBlocks` is larger, grow by doubling (copying the pools)
 * as sequences need more; a server sizes them once at start-up instead (initial = max). A long prefill reserves
 * its whole context up front with exact growth, so the pool is not regrown (and copied) in the middle of it. When
 * no block is in use, growth frees the old pools before allocating the new ones (there is nothing to copy), so the
 * two are never held at once. Block ids stay valid across growth, and the pools' addresses reach the kernels
 * through per-step metadata, so CUDA graphs survive it.
 */

import { KV_BLOCK_SIZE, type Backend, type Tensor } from '../backend/backend.js';
import type { ModelConfig } from '../config/config.js';
import { CapacityError, DisposedError, InvalidArgumentError, assert } from '../util/errors.js';

export interface CachePoolOptions {
  /** Most sequences with caches at once: the number of lightning state slots. */
  readonly maxSequences: number;
  /** KV blocks allocated up front. */
  readonly initialKvBlocks: number;
  /** Most KV blocks the pools may grow to (≥ initialKvBlocks). */
  readonly maxKvBlocks: number;
  /** Element type of the K/V pools (bf16 on the GPU, f32 on the CPU). */
  readonly kvDType: 'f32' | 'bf16';
}

/** KV blocks needed to hold `tokens` cache rows. */
export function kvBlocksFor(tokens: number): number {
  return Math.ceil(tokens / KV_BLOCK_SIZE);
}

export class CachePool {
  /** Lightning state tensors of each slot, by layer (undefined for softmax layers); filled on first use. */
  private readonly slots: ((Tensor | undefined)[] | undefined)[];
  private readonly freeSlots: number[] = [];
  private slotsInUse = 0;
  /** Per softmax layer: the K and V pools (undefined for lightning layers). */
  private readonly pools: ({ k: Tensor; v: Tensor } | undefined)[];
  private readonly freeBlocks: number[] = [];
  private blocks = 0;
  private disposed = false;
  readonly hasSoftmaxLayers: boolean;

  constructor(
    readonly backend: Backend,
    readonly config: ModelConfig,
    readonly options: CachePoolOptions,
  ) {
    const { maxSequences, initialKvBlocks, maxKvBlocks } = options;
    if (!(Number.isSafeInteger(maxSequences) && maxSequences >= 1)) throw new InvalidArgumentError(`maxSequences must be an integer ≥ 1, got ${maxSequences}`, { param: 'maxSequences' });
    if (!(Number.isSafeInteger(initialKvBlocks) && initialKvBlocks >= 0 && Number.isSafeInteger(maxKvBlocks) && maxKvBlocks >= initialKvBlocks)) {
      throw new InvalidArgumentError(`KV blocks: need 0 ≤ initial (${initialKvBlocks}) ≤ max (${maxKvBlocks})`, { param: 'kvBlocks' });
    }
    this.slots = Array.from({ length: maxSequences }, () => undefined);
    for (let i = maxSequences - 1; i >= 0; i--) this.freeSlots.push(i);
    this.hasSoftmaxLayers = config.layerTypes.includes('softmax');
    this.pools = config.layerTypes.map(() => undefined);
    if (this.hasSoftmaxLayers) this.grow(initialKvBlocks);
  }

  /** Lightning state slots in use. */
  get slotsUsed(): number {
    return this.slotsInUse;
  }

  /** Lightning state slots whose states are allocated (in use or kept for reuse). */
  get slotsAllocated(): number {
    return this.slots.filter((s) => s !== undefined).length;
  }

  get maxSequences(): number {
    return this.options.maxSequences;
  }

  /** KV blocks allocated now (grows up to maxKvBlocks). */
  get kvBlocksAllocated(): number {
    return this.blocks;
  }

  /** KV blocks held by sequences. */
  get kvBlocksUsed(): number {
    return this.blocks - this.freeBlocks.length;
  }

  /** KV blocks a sequence could still get (free now plus room to grow). */
  get kvBlocksAvailable(): number {
    return this.hasSoftmaxLayers ? this.freeBlocks.length + (this.options.maxKvBlocks - this.blocks) : Number.POSITIVE_INFINITY;
  }

  /** Fraction of the KV capacity (maxKvBlocks) held by sequences. */
  get kvUsage(): number {
    return this.hasSoftmaxLayers && this.options.maxKvBlocks > 0 ? this.kvBlocksUsed / this.options.maxKvBlocks : 0;
  }

  /** Most tokens one sequence could ever cache (the whole KV capacity); Infinity without softmax layers. */
  get maxTokensPerSequence(): number {
    return this.hasSoftmaxLayers ? this.options.maxKvBlocks * KV_BLOCK_SIZE : Number.POSITIVE_INFINITY;
  }

  /** A fresh sequence (zero lightning states, no KV blocks), or undefined when every slot is taken. */
  tryAcquire(): SequenceState | undefined {
    this.ensureLive();
    const slot = this.freeSlots.pop();
    if (slot === undefined) return undefined;
    let states = this.slots[slot];
    const { numHeads: H, headDim: Dh } = this.config;
    if (!states) {
      states = this.config.layerTypes.map((t) => (t === 'lightning' ? this.backend.zeros([H, Dh, Dh], 'f32') : undefined));
      this.slots[slot] = states;
    } else {
      for (const s of states) if (s) this.backend.fillZero(s);
    }
    this.slotsInUse++;
    return new SequenceState(this, slot, states);
  }

  /** Like tryAcquire, but a full pool is an error. */
  acquire(): SequenceState {
    const s = this.tryAcquire();
    if (!s) throw new CapacityError(`all ${this.options.maxSequences} sequence slots are in use (dispose finished sessions, or raise maxSequences)`);
    return s;
  }

  /**
   * @internal Returns `count` block ids, growing the pools if needed (by doubling, or to exactly what is needed
   * when `exact`); undefined when they cannot be had.
   */
  takeBlocks(count: number, exact = false): number[] | undefined {
    if (count <= 0) return [];
    if (count > this.kvBlocksAvailable) return undefined;
    if (count > this.freeBlocks.length) {
      const need = this.blocks + count - this.freeBlocks.length;
      this.grow(exact ? need : Math.min(this.options.maxKvBlocks, Math.max(need, this.blocks * 2, 16)));
    }
    return this.freeBlocks.splice(this.freeBlocks.length - count, count);
  }

  /**
   * What taking `count` more blocks with exact growth would hold: the pool's blocks afterwards, and the old blocks
   * held alongside the new pools while growing (only when some are in use and must be copied).
   */
  kvGrowthFor(count: number): { blocksAfter: number; heldWhileGrowing: number } {
    if (!this.hasSoftmaxLayers || count <= this.freeBlocks.length) return { blocksAfter: this.blocks, heldWhileGrowing: 0 };
    return { blocksAfter: this.blocks + count - this.freeBlocks.length, heldWhileGrowing: this.kvBlocksUsed > 0 ? this.blocks : 0 };
  }

  /** @internal */
  returnBlocks(ids: readonly number[]): void {
    for (let i = ids.length - 1; i >= 0; i--) this.freeBlocks.push(ids[i]);
  }

  /** @internal */
  releaseSlot(slot: number, blocks: readonly number[]): void {
    this.returnBlocks(blocks);
    this.freeSlots.push(slot);
    this.slotsInUse--;
  }

  /** @internal The K/V pools of softmax layer `layer`. */
  poolsFor(layer: number): { k: Tensor; v: Tensor } {
    const p = this.pools[layer];
    assert(p, `layer ${layer} has no KV pool (not a softmax layer)`);
    return p;
  }

  /** Frees every slot's states and the pools. Sequences must not be used afterwards. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const states of this.slots) for (const s of states ?? []) if (s) this.backend.free(s);
    for (const p of this.pools) {
      if (p) {
        this.backend.free(p.k);
        this.backend.free(p.v);
      }
    }
  }

  /** Resizes the pools to `blocks` blocks, keeping the rows of the existing blocks when any is in use. */
  private grow(blocks: number): void {
    if (blocks <= this.blocks) return;
    const { numKvHeads: Hkv, headDim: Dh } = this.config;
    const b = this.backend;
    const rows = blocks * KV_BLOCK_SIZE;
    const copy = this.kvBlocksUsed > 0;
    for (let l = 0; l < this.pools.length; l++) {
      if (this.config.layerTypes[l] !== 'softmax') continue;
      let old = this.pools[l];
      if (old && !copy) {
        // Nothing to keep: free first, so that the old and the new pools are never held together.
        b.free(old.k);
        b.free(old.v);
        old = undefined;
      }
      const k = b.alloc([rows, Hkv, Dh], this.options.kvDType), v = b.alloc([rows, Hkv, Dh], this.options.kvDType);
      if (old && this.blocks > 0) {
        const keep = [this.blocks * KV_BLOCK_SIZE, Hkv, Dh];
        b.copy(b.view(k, keep), b.view(old.k, keep));
        b.copy(b.view(v, keep), b.view(old.v, keep));
        b.free(old.k);
        b.free(old.v);
      }
      this.pools[l] = { k, v };
    }
    for (let i = blocks - 1; i >= this.blocks; i--) this.freeBlocks.push(i);
    this.blocks = blocks;
  }

  private ensureLive(): void {
    if (this.disposed) throw new DisposedError('CachePool');
  }
}

/**
 * One sequence's caches: its lightning state slot, its KV blocks and the number of tokens consumed (its position).
 * Obtained from a CachePool; `dispose()` gives the slot and blocks back.
 */
export class SequenceState {
  /** Tokens consumed so far: the position of the next token. */
  position = 0;
  /** Block ids in order (host copy of the block table). */
  private readonly blocks: number[] = [];
  /** i32 block table on the backend; grows by doubling. */
  private table: Tensor | undefined;
  private disposed = false;

  /** @internal use CachePool.acquire() */
  constructor(
    private readonly pool: CachePool,
    readonly slot: number,
    /** Lightning state by layer index (undefined for softmax layers). */
    readonly lightning: readonly (Tensor | undefined)[],
  ) {}

  /** KV blocks held. */
  get kvBlocks(): number {
    return this.blocks.length;
  }

  /** The paged K/V pools and this sequence's block table for softmax layer `layer` (call reserve() first). */
  kvFor(layer: number): { k: Tensor; v: Tensor; blockTable: Tensor } {
    this.ensureLive();
    assert(this.table, 'kvFor() before reserve()');
    return { ...this.pool.poolsFor(layer), blockTable: this.table };
  }

  /** True when the pool can give this sequence room for `tokens` cache rows. */
  canReserve(tokens: number): boolean {
    if (!this.pool.hasSoftmaxLayers) return true;
    return kvBlocksFor(tokens) - this.blocks.length <= this.pool.kvBlocksAvailable;
  }

  /**
   * Makes room for `tokens` cache rows in every softmax layer; a CapacityError when the pool is exhausted. The
   * pool grows by doubling, or with `growth` 'exact' to just what is needed (one allocation for a long context).
   */
  reserve(tokens: number, growth: 'double' | 'exact' = 'double'): void {
    this.ensureLive();
    if (!this.pool.hasSoftmaxLayers) return;
    const need = kvBlocksFor(Math.max(tokens, 1)) - this.blocks.length;
    if (need <= 0 && this.table) return;
    const ids = this.pool.takeBlocks(need, growth === 'exact');
    if (!ids) {
      throw new CapacityError(
        `the KV cache is full: ${tokens} tokens need ${kvBlocksFor(tokens)} blocks of ${KV_BLOCK_SIZE}, ${this.blocks.length} held and ${this.pool.kvBlocksAvailable} free`,
      );
    }
    const first = this.blocks.length;
    this.blocks.push(...ids);
    const b = this.pool.backend;
    if (!this.table || this.table.shape[0] < this.blocks.length) {
      if (this.table) b.free(this.table);
      this.table = b.alloc([Math.max(this.blocks.length, (this.table?.shape[0] ?? 0) * 2, 16)], 'i32');
      b.writeInt32(this.table, 0, Int32Array.from(this.blocks));
    } else if (ids.length > 0) {
      b.writeInt32(this.table, first, Int32Array.from(ids));
    }
  }

  /** Copies the lightning state of layer `layer` to the host (fp32 [H, Dh, Dh]). */
  lightningState(layer: number): Float32Array {
    this.ensureLive();
    const s = this.lightning[layer];
    assert(s, `layer ${layer} is not a lightning layer`);
    return this.pool.backend.toFloat32(s);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    if (this.table) this.pool.backend.free(this.table);
    this.pool.releaseSlot(this.slot, this.blocks);
    this.blocks.length = 0;
  }

  private ensureLive(): void {
    if (this.disposed) throw new DisposedError('SequenceState');
  }
}
