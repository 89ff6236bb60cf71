/**
 * Top-p boundary cases shared by the CPU sampler's unit test and the GPU sampler's test: for the distribution
 * [0.5, 0.3, 0.15, 0.05], each p with the token ids the nucleus must keep (the smallest prefix whose mass reaches p,
 * exactly at the boundaries, whatever constant the logits are shifted by).
 */
export const TOP_P_BOUNDARY_CASES: readonly (readonly [number, readonly number[]])[] = [
  [0.3, [0]],
  [0.5, [0]],
  [0.5001, [0, 1]],
  [0.8, [0, 1]],
  [0.81, [0, 1, 2]],
  [0.95, [0, 1, 2]],
  [0.96, [0, 1, 2, 3]],
  [1, [0, 1, 2, 3]],
];
