/**
 * A small safetensors writer for tests: builds files from typed arrays (F32, BF16, I64, or raw bytes of any dtype)
 * and rewrites the header of an existing file, so that tests can make valid checkpoints in other layouts and
 * broken ones on purpose. Layout: u64 little-endian header length N, N bytes of JSON
 * (`name → {dtype, shape, data_offsets: [begin, end]}`, optional `__metadata__`), then the data buffer. The header is
 * padded with spaces to a multiple of 8, as the reference writer does. Not for large files (everything is in memory).
 */
import fs from 'node:fs';
import { f32ToBf16Bits } from '../../src/util/dtype.js';

/** A tensor to write. `data` is converted to `dtype`: numbers/Float32Array for F32 and BF16 (rounded to nearest
 * even), numbers/bigints/BigInt64Array for I64; a Uint8Array is taken as the raw little-endian bytes of any dtype. */
export interface WriterTensor {
  readonly dtype: string;
  readonly shape: readonly number[];
  readonly data: Float32Array | BigInt64Array | Uint8Array | readonly number[] | readonly bigint[];
}

export type WriterTensors = ReadonlyMap<string, WriterTensor> | Readonly<Record<string, WriterTensor>>;

const ELEM_BYTES: Readonly<Record<string, number>> = {
  BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1, I16: 2, U16: 2, F16: 2, BF16: 2, I32: 4, U32: 4, F32: 4, F64: 8, I64: 8, U64: 8,
};

/** The little-endian bytes of one tensor. Throws when the element count does not match the shape. */
export function tensorBytes(t: WriterTensor): Uint8Array {
  const count = t.shape.reduce((a, d) => a * d, 1);
  if (t.data instanceof Uint8Array) {
    const size = ELEM_BYTES[t.dtype];
    if (size === undefined) throw new Error(`safetensors-writer: unknown dtype ${t.dtype}`);
    if (t.data.length !== count * size) {
      throw new Error(`safetensors-writer: ${t.dtype} [${t.shape.join(', ')}] needs ${count * size} bytes, got ${t.data.length}`);
    }
    return t.data;
  }
  if (t.data.length !== count) {
    throw new Error(`safetensors-writer: shape [${t.shape.join(', ')}] has ${count} elements, got ${t.data.length} values`);
  }
  const values = t.data as ArrayLike<number | bigint>;
  switch (t.dtype) {
    case 'F32': {
      const out = new Uint8Array(count * 4);
      const dv = new DataView(out.buffer);
      for (let i = 0; i < count; i++) dv.setFloat32(i * 4, Number(values[i]), true);
      return out;
    }
    case 'BF16': {
      const out = new Uint8Array(count * 2);
      const dv = new DataView(out.buffer);
      for (let i = 0; i < count; i++) dv.setUint16(i * 2, f32ToBf16Bits(Number(values[i])), true);
      return out;
    }
    case 'I64': {
      const out = new Uint8Array(count * 8);
      const dv = new DataView(out.buffer);
      for (let i = 0; i < count; i++) dv.setBigInt64(i * 8, BigInt(values[i]), true);
      return out;
    }
    default:
      throw new Error(`safetensors-writer: give ${t.dtype} data as raw bytes (Uint8Array)`);
  }
}

/** 8-byte little-endian length + the header JSON padded with spaces to a multiple of 8. */
export function encodeHeader(header: unknown): Uint8Array {
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  if (pad > 0) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const out = new Uint8Array(8 + json.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

/** The bytes of a safetensors file holding `tensors` in iteration order, contiguous from offset 0. */
export function encodeSafetensors(tensors: WriterTensors, metadata?: Record<string, string>): Uint8Array {
  const entries = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors as Record<string, WriterTensor>);
  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header.__metadata__ = metadata;
  const datas: Uint8Array[] = [];
  let offset = 0;
  for (const [name, t] of entries) {
    const bytes = tensorBytes(t);
    header[name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + bytes.length] };
    datas.push(bytes);
    offset += bytes.length;
  }
  return concat([encodeHeader(header), ...datas]);
}

/** Writes `tensors` to `file` as one safetensors file. */
export function writeSafetensors(file: string, tensors: WriterTensors, metadata?: Record<string, string>): void {
  fs.writeFileSync(file, encodeSafetensors(tensors, metadata));
}

/** Header JSON and data buffer of an existing (valid-enough) safetensors file, read whole: small files only. */
export function readRawSafetensors(file: string): { header: Record<string, any>; data: Uint8Array } {
  const bytes = fs.readFileSync(file);
  const n = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Record<string, any>;
  return { header, data: new Uint8Array(bytes.subarray(8 + n)) };
}

/**
 * Rewrites `file` with the header returned by `edit` (which may mutate its argument and return nothing) in front
 * of the unchanged data buffer. The header length is recomputed, so the edit may change the JSON's size.
 */
export function rewriteHeader(file: string, edit: (header: Record<string, any>) => Record<string, any> | void): void {
  const { header, data } = readRawSafetensors(file);
  const next = edit(header) ?? header;
  fs.writeFileSync(file, concat([encodeHeader(next), data]));
}

/** The tensors of an existing safetensors file, in data order, as writer input (views of the file's bytes). */
export function readTensors(file: string): { tensors: Map<string, WriterTensor>; metadata: Record<string, string> | undefined } {
  const { header, data } = readRawSafetensors(file);
  const entries = Object.entries(header).filter(([k]) => k !== '__metadata__') as [string, { dtype: string; shape: number[]; data_offsets: [number, number] }][];
  entries.sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0]);
  const tensors = new Map<string, WriterTensor>();
  for (const [name, e] of entries) tensors.set(name, { dtype: e.dtype, shape: e.shape, data: data.subarray(e.data_offsets[0], e.data_offsets[1]) });
  return { tensors, metadata: header.__metadata__ ?? undefined };
}

/**
 * Rewrites `file` without the tensors in `drop`, keeping the others' bytes (the data buffer is repacked so the
 * file stays valid). Returns the names that were removed.
 */
export function removeTensors(file: string, drop: (name: string) => boolean): string[] {
  const { tensors, metadata } = readTensors(file);
  const removed = [...tensors.keys()].filter(drop);
  for (const name of removed) tensors.delete(name);
  writeSafetensors(file, tensors, metadata);
  return removed;
}

/** Rewrites `file` with `extra` tensors appended after the existing ones (whose bytes are kept). */
export function addTensors(file: string, extra: WriterTensors): void {
  const { tensors, metadata } = readTensors(file);
  for (const [name, t] of extra instanceof Map ? extra.entries() : Object.entries(extra as Record<string, WriterTensor>)) tensors.set(name, t);
  writeSafetensors(file, tensors, metadata);
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
