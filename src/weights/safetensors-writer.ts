/**
 * Writes a safetensors file: u64 little-endian header length N, N bytes of JSON (`name → {dtype, shape,
 * data_offsets}`, optional `__metadata__`, padded with spaces to a multiple of 8), then the tensors' bytes in
 * header order. Tensors are converted and written one at a time (never the whole file in memory), to a temporary
 * name renamed into place at the end, so an interrupted write never leaves a truncated checkpoint behind.
 */

import fs from 'node:fs';
import { f32ToBf16Bits } from '../util/dtype.js';

export type WritableDType = 'F32' | 'BF16' | 'F64';

export interface TensorToWrite {
  readonly name: string;
  readonly dtype: WritableDType;
  readonly shape: readonly number[];
  /** Values in row-major order; converted (rounded to nearest even for BF16) to `dtype`. */
  readonly data: Float64Array | Float32Array;
}

/** Bytes per element of each dtype the writer produces. */
export const WRITABLE_DTYPE_BYTES: Readonly<Record<WritableDType, number>> = { F32: 4, BF16: 2, F64: 8 };

function encode(t: TensorToWrite): Buffer {
  const n = t.data.length;
  const out = Buffer.alloc(n * WRITABLE_DTYPE_BYTES[t.dtype]);
  if (t.dtype === 'F32') for (let i = 0; i < n; i++) out.writeFloatLE(t.data[i], i * 4);
  else if (t.dtype === 'F64') for (let i = 0; i < n; i++) out.writeDoubleLE(t.data[i], i * 8);
  else for (let i = 0; i < n; i++) out.writeUInt16LE(f32ToBf16Bits(Math.fround(t.data[i])), i * 2);
  return out;
}

export function writeSafetensors(file: string, tensors: readonly TensorToWrite[], metadata?: Readonly<Record<string, string>>): void {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) throw new RangeError(`safetensors writer: ${t.name} has ${t.data.length} values for shape [${t.shape.join(', ')}]`);
    const bytes = count * WRITABLE_DTYPE_BYTES[t.dtype];
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  const tmp = `${file}.partial`;
  const fd = fs.openSync(tmp, 'w');
  try {
    fs.writeSync(fd, head);
    fs.writeSync(fd, json);
    for (const t of tensors) fs.writeSync(fd, encode(t));
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
}
