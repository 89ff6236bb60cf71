/**
 * Reads a fixture's expected.safetensors (reference outputs, see test/fixtures/README.md) and compares arrays.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import assert from 'node:assert/strict';
import { readSafetensorsHeader } from '../../src/weights/safetensors.js';
import { FIXTURES } from './paths.js';

export interface ExpectedTensor {
  readonly shape: readonly number[];
  /** F32 data, or I64 data converted to numbers. */
  readonly data: Float32Array | number[];
}

export async function readExpected(fixture: string): Promise<Map<string, ExpectedTensor>> {
  const file = path.join(FIXTURES, fixture, 'expected.safetensors');
  const header = await readSafetensorsHeader(file);
  const bytes = await fs.readFile(file); // a small test file, not a checkpoint
  const out = new Map<string, ExpectedTensor>();
  for (const [name, t] of header.tensors) {
    const raw = bytes.subarray(t.offset, t.offset + t.byteLength);
    const copy = new Uint8Array(raw); // aligned copy
    if (t.dtype === 'F32') out.set(name, { shape: t.shape, data: new Float32Array(copy.buffer) });
    else if (t.dtype === 'I64') out.set(name, { shape: t.shape, data: Array.from(new BigInt64Array(copy.buffer), Number) });
    else throw new Error(`unexpected dtype ${t.dtype} for ${name}`);
  }
  return out;
}

export function getF32(m: Map<string, ExpectedTensor>, name: string): Float32Array {
  const t = m.get(name);
  assert.ok(t && t.data instanceof Float32Array, `expected.safetensors has no F32 tensor ${name}`);
  return t.data;
}

export function getIds(m: Map<string, ExpectedTensor>, name: string): number[] {
  const t = m.get(name);
  assert.ok(t && Array.isArray(t.data), `expected.safetensors has no I64 tensor ${name}`);
  return t.data;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, 'length mismatch');
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

/** Asserts max |a − b| ≤ tol, reporting the worst element. */
export function assertClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length ${actual.length} vs ${expected.length}`);
  let worst = 0, at = -1;
  for (let i = 0; i < actual.length; i++) {
    const d = Math.abs(actual[i] - expected[i]);
    if (Number.isNaN(d) || d > worst) {
      worst = Number.isNaN(d) ? Infinity : d;
      at = i;
    }
  }
  assert.ok(worst <= tol, `${what}: max |Δ| = ${worst} > ${tol} at element ${at} (got ${actual[at]}, expected ${expected[at]})`);
}
