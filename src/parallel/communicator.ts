/**
 * Collectives between the ranks of a sharded model (tensor- and expert-parallel MiniMax-01).
 *
 * The model only needs one collective: an in-place fp32 sum. Row-parallel projections (attention out/o-proj) and
 * the expert-parallel MoE leave each rank with a partial [T, D] sum; the lightning output norm needs the global
 * sum of squares of a row split over ranks. Every rank must call the collectives in the same order with tensors of
 * the same size. Implementations: SingleRank (size 1), ThreadCommunicator (ranks as worker_threads, for CI) and,
 * elsewhere, NCCL.
 */

import type { Tensor } from '../backend/backend.js';

export interface Communicator {
  readonly rank: number;
  readonly size: number;
  /**
   * t ← Σ over ranks of t, in place, computed in fp32 or wider. The result is bit-identical on every rank (the sum
   * runs in a fixed rank order), so replicated state never drifts apart between ranks.
   */
  allReduceSum(t: Tensor): void;
}

/** One process, no peers: every collective is the identity. */
export class SingleRank implements Communicator {
  readonly rank = 0;
  readonly size = 1;
  allReduceSum(_t: Tensor): void {
    // The sum over one rank is the tensor itself.
  }
}
