/**
 * Lightning decay rates ("slopes", MODEL.md §8.3): s[h, l] = fp32(base_h · fp32(1 − l/(L−1) + 1e-5)), with base_h
 * from the ALiBi rule in float64 rounded to fp32, and l the GLOBAL layer index (softmax layers count).
 * H = 64, L = 80: s[0,0] = 0.9170132279396057, s[63,0] = 0.003906289115548134, s[0,78] = 0.011616815812885761.
 */

/** ALiBi slopes for H heads, float64: 2^(−8(h+1)/H) for power-of-two H, interleaved otherwise. */
export function alibiBase(H: number): number[] {
  const pow2 = (n: number): number[] => {
    const start = 2 ** -(2 ** -(Math.log2(n) - 3));
    return Array.from({ length: n }, (_, i) => start * start ** i);
  };
  if (Number.isInteger(Math.log2(H))) return pow2(H);
  const c = 2 ** Math.floor(Math.log2(H));
  return [...pow2(c), ...alibiBase(2 * c).filter((_, i) => i % 2 === 0).slice(0, H - c)];
}

/**
 * fp32 slopes of layer `layer` (global index) in a model of `numLayers` layers.
 * The remote code divides by L − 1; a one-layer model would divide 0 by 0 there, and we take the factor as 1 + 1e-5.
 */
export function lightningSlopes(H: number, layer: number, numLayers: number): Float32Array {
  const factor = Math.fround(1 - (numLayers > 1 ? layer / (numLayers - 1) : 0) + 1e-5);
  return Float32Array.from(alibiBase(H), (b) => Math.fround(Math.fround(b) * factor));
}
