/**
 * Lightning and softmax attention, forward and backward, in float64 on packed documents (the CPU training
 * reference). The bodies live in lightning64.ts (MODEL.md §8, chunked with the reverse state recursion) and
 * attention64.ts (MODEL.md §9, causal GQA within each document, flash-style backward).
 */

export { lightningForward64, lightningBackward64 } from './lightning64.js';
export { attentionForward64, attentionBackward64 } from './attention64.js';
