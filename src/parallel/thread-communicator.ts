/**
 * A simulated communicator for ranks that run as worker_threads of one process (tests, CPU experiments): the
 * collective API of the NCCL one over shared memory.
 *
 * Layout: `ThreadCommunicatorShared` holds a control word array (barrier count and generation) and a data area of
 * `size` slots of `slotElements` floats. allReduceSum goes through the tensor in slot-sized chunks: each rank copies
 * its chunk into its slot, waits at a barrier, then every rank sums all slots itself in rank order 0..size−1 in
 * float64 (so every rank gets the same bits, with no "root" rank) and waits at a second barrier before the slots are
 * reused. Two barriers per chunk are slow but obviously correct; this is a test vehicle, not a fast path.
 */

import type { Backend, Tensor } from '../backend/backend.js';
import { InternalError } from '../util/errors.js';
import type { Communicator } from './communicator.js';

/** The shared memory of one group of thread ranks; create it once and send it to every rank (postMessage). */
export interface ThreadCommunicatorShared {
  readonly size: number;
  /** Int32 [2]: arrivals at the current barrier, barrier generation. */
  readonly control: SharedArrayBuffer;
  /** Float32 [size · slotElements]. */
  readonly data: SharedArrayBuffer;
  readonly slotElements: number;
}

export function createThreadCommunicatorShared(size: number, slotElements = 1 << 18): ThreadCommunicatorShared {
  if (!(Number.isSafeInteger(size) && size >= 1)) throw new InternalError(`communicator size must be ≥ 1, got ${size}`);
  return { size, control: new SharedArrayBuffer(8), data: new SharedArrayBuffer(size * slotElements * 4), slotElements };
}

export class ThreadCommunicator implements Communicator {
  readonly size: number;
  private readonly control: Int32Array;
  private readonly slots: Float32Array;
  private readonly slot: number;

  constructor(
    readonly rank: number,
    shared: ThreadCommunicatorShared,
    private readonly backend: Backend,
    /** A peer that has not arrived at a barrier after this long is taken to have failed (so tests fail, not hang). */
    private readonly timeoutMs = 120_000,
  ) {
    if (!(rank >= 0 && rank < shared.size)) throw new InternalError(`rank ${rank} outside [0, ${shared.size})`);
    this.size = shared.size;
    this.control = new Int32Array(shared.control);
    this.slots = new Float32Array(shared.data);
    this.slot = shared.slotElements;
  }

  allReduceSum(t: Tensor): void {
    if (this.size === 1) return;
    const host = this.backend.toFloat32(t);
    const n = host.length, S = this.slot, P = this.size;
    for (let lo = 0; lo < n; lo += S) {
      const len = Math.min(S, n - lo);
      this.slots.set(host.subarray(lo, lo + len), this.rank * S);
      this.barrier();
      for (let i = 0; i < len; i++) {
        let s = 0;
        for (let r = 0; r < P; r++) s += this.slots[r * S + i];
        host[lo + i] = s;
      }
      this.barrier();
    }
    this.backend.writeBytes(t, 0, new Uint8Array(host.buffer, host.byteOffset, host.byteLength), 'F32');
  }

  /** Waits until every rank has arrived (a generation-counting barrier on Atomics). */
  barrier(): void {
    const c = this.control;
    const gen = Atomics.load(c, 1);
    if (Atomics.add(c, 0, 1) === this.size - 1) {
      Atomics.store(c, 0, 0);
      Atomics.add(c, 1, 1);
      Atomics.notify(c, 1);
      return;
    }
    while (Atomics.load(c, 1) === gen) {
      if (Atomics.wait(c, 1, gen, this.timeoutMs) === 'timed-out') {
        throw new InternalError(`rank ${this.rank}: peers did not reach the barrier within ${this.timeoutMs} ms`);
      }
    }
  }
}
