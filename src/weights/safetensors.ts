/**
 * Parses and validates the header of one safetensors file without reading its tensor data.
 *
 * Implements SERVING.md §9 rules F1–F9 (after huggingface/safetensors `tensor.rs` and `attacks/README.md`): bounded
 * header length read as a BigInt, strict UTF-8 JSON of the expected shape, exact integer offsets and dims, no
 * duplicate keys, contiguous tensors with byte lengths matching dtype × shape, a file length that matches exactly,
 * and a dedicated error for Git LFS pointer files. Every error is a `WeightsError` naming the file and, where there
 * is one, the tensor.
 */

import { open, type FileHandle } from 'node:fs/promises';
import * as path from 'node:path';

import { WeightsError } from '../util/errors.js';

export type StDType =
  | 'BOOL'
  | 'U8'
  | 'I8'
  | 'F8_E4M3'
  | 'F8_E5M2'
  | 'I16'
  | 'U16'
  | 'F16'
  | 'BF16'
  | 'I32'
  | 'U32'
  | 'F32'
  | 'F64'
  | 'I64'
  | 'U64';

export const DTYPE_BYTES: Readonly<Record<StDType, number>> = Object.freeze({
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
});

export interface TensorEntry {
  readonly name: string;
  readonly dtype: StDType;
  readonly shape: readonly number[];
  /** Absolute path of the file that holds it. */
  readonly file: string;
  /** Absolute byte offset of the first data byte in that file (8 + N + begin). */
  readonly offset: number;
  readonly byteLength: number;
}

export interface SafetensorsHeader {
  readonly file: string;
  readonly fileSize: number;
  /** A Map, so that a tensor named "__proto__" is an ordinary name. In data order (by offset). */
  readonly tensors: ReadonlyMap<string, TensorEntry>;
  readonly metadata: Readonly<Record<string, string>> | undefined;
}

/** F1: the header-length limit of the reference implementation (100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;
/** F3: dims and offsets must fit the schema's 48-bit bound; every such integer is exact in a double. */
export const MAX_HEADER_INT = 2 ** 48;

const LFS_PREFIX = 'version https://git-lfs.github.com/spec/';
// Enough to hold a whole LFS pointer (about 130 bytes) and to tell one apart from a real header length.
const PROBE_BYTES = 512;
// A valid header nests 3 deep (header → entry → shape); the cap keeps a hostile "[[[[…" from costing memory.
const MAX_HEADER_DEPTH = 8;
const ENTRY_KEYS = ['dtype', 'shape', 'data_offsets'] as const;
const DTYPE_LIST = Object.keys(DTYPE_BYTES).join(', ');
// A plain JSON integer literal of at most 15 digits: JSON.parse reads it exactly (2^53 has 16 digits, 2^48 has 15).
const PLAIN_INT = /^(?:0|[1-9][0-9]{0,14})$/;

/** Reads and validates the header of the safetensors file at `file`. Throws `WeightsError` on any violation. */
export async function readSafetensorsHeader(file: string): Promise<SafetensorsHeader> {
  const abs = path.resolve(file);
  const base = path.basename(abs);
  const fail = (message: string, tensor?: string): WeightsError =>
    new WeightsError(`${base}: ${message}`, tensor === undefined ? { file: abs } : { file: abs, tensor });

  let fh: FileHandle;
  try {
    fh = await open(abs, 'r');
  } catch (e) {
    throw new WeightsError(`${base}: cannot open: ${errText(e)}`, { file: abs, cause: e });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw fail('not a regular file');
    const fileSize = st.size;

    // F9 before F1: a pointer's first 8 bytes ("version ") decode to an absurd header length, which would hide the
    // real problem behind "header too large".
    const probe = new Uint8Array(Math.min(fileSize, PROBE_BYTES));
    await readExact(fh, probe, 0, fail);
    const lfs = lfsPointerSize(probe);
    if (lfs !== undefined) {
      const what = lfs === null ? '' : ` (pointer to a ${lfs}-byte object)`;
      throw fail(
        `is a Git LFS pointer, not the weights${what}: the weights were not downloaded (run \`git lfs pull\`)`,
      );
    }

    // F1
    if (fileSize < 8) throw fail(`file too small: expected at least 8 bytes (header length), got ${fileSize}`);
    const n64 = new DataView(probe.buffer, probe.byteOffset, 8).getBigUint64(0, true);
    if (n64 > BigInt(MAX_HEADER_BYTES)) {
      throw fail(`header length too large: expected at most ${MAX_HEADER_BYTES} bytes, got ${n64}`);
    }
    const n = Number(n64);
    if (8 + n > fileSize) {
      throw fail(
        `header length ${n} does not fit in the file: expected a file of at least ${8 + n} bytes, got ${fileSize} (truncated, or not a safetensors file)`,
      );
    }

    // F8: N has been checked against both the limit and the real file size, so this allocation is bounded.
    const headerBytes = new Uint8Array(n);
    await readExact(fh, headerBytes, 8, fail);

    const tensors = parseHeader(headerBytes, abs, 8 + n, fail);
    const dataEnd = tensors.dataBytes;

    // F7
    const expected = 8 + n + dataEnd;
    if (fileSize < expected) {
      throw fail(
        `file is truncated: expected ${expected} bytes (8 + header ${n} + data ${dataEnd}), got ${fileSize}`,
      );
    }
    if (fileSize > expected) {
      throw fail(
        `trailing data after the last tensor: expected ${expected} bytes (8 + header ${n} + data ${dataEnd}), got ${fileSize}`,
      );
    }
    return Object.freeze({ file: abs, fileSize, tensors: tensors.map, metadata: tensors.metadata });
  } finally {
    await fh.close();
  }
}

type Fail = (message: string, tensor?: string) => WeightsError;

/** Reads exactly `buf.length` bytes at `position`; a short read means the file shrank or lied about its size. */
async function readExact(fh: FileHandle, buf: Uint8Array, position: number, fail: Fail): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) {
      throw fail(`file is truncated: expected ${buf.length} bytes at byte ${position}, got ${done}`);
    }
    done += bytesRead;
  }
}

/** undefined: not an LFS pointer; null: a pointer without a readable size; else the size of the missing object. */
function lfsPointerSize(probe: Uint8Array): number | null | undefined {
  if (probe.length < LFS_PREFIX.length) return undefined;
  for (let i = 0; i < LFS_PREFIX.length; i++) if (probe[i] !== LFS_PREFIX.charCodeAt(i)) return undefined;
  const text = new TextDecoder('utf-8').decode(probe);
  const m = /\nsize ([0-9]{1,15})(?:\r?\n|$)/.exec(text);
  return m === null ? null : Number(m[1]);
}

function errText(e: unknown): string {
  if (e !== null && typeof e === 'object' && 'code' in e && typeof e.code === 'string') return e.code;
  return oneLine(e instanceof Error ? e.message : String(e));
}

/** Makes text from a hostile file safe for a one-line message: no control characters, bounded length. */
export function oneLine(s: string, max = 200): string {
  // eslint-disable-next-line no-control-regex
  const flat = s.replace(/[\u0000-\u001f\u007f\u2028\u2029]+/g, ' ');
  return flat.length > max ? `${flat.slice(0, max)}…` : flat;
}

/** A name for an error message: quoted and escaped (one line), shortened when huge. */
export function quote(name: string): string {
  const q = JSON.stringify(name);
  return q.length > 200 ? `${q.slice(0, 200)}…"` : q;
}

// ---------------------------------------------------------------------------------------------------------------
// Header parsing
// ---------------------------------------------------------------------------------------------------------------

interface ParsedHeader {
  map: Map<string, TensorEntry>;
  metadata: Readonly<Record<string, string>> | undefined;
  /** The end of the last tensor: the length of the data buffer the header describes. */
  dataBytes: number;
}

function parseHeader(bytes: Uint8Array, file: string, dataStart: number, fail: Fail): ParsedHeader {
  // F2: strict UTF-8. ignoreBOM keeps a BOM in the text so that JSON.parse rejects it, as the reference does.
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    throw fail(`header is not valid UTF-8 (${bytes.length} bytes at byte 8)`);
  }

  // F3/F4: JSON.parse silently rounds big numbers and keeps the last of duplicate keys, so scan the raw text.
  const parsed = parseJsonChecked(text, {
    maxDepth: MAX_HEADER_DEPTH,
    checkNumber: (p, raw) =>
      // Only dims and offsets are numbers in a valid header; a number anywhere else fails the shape checks below.
      p.length === 3 && p[0] !== '__metadata__' && (p[1] === 'shape' || p[1] === 'data_offsets')
        ? PLAIN_INT.test(raw) && Number(raw) <= MAX_HEADER_INT
        : true,
  });
  if (!parsed.ok) {
    const pr = parsed.problem;
    switch (pr.kind) {
      case 'syntax':
        throw fail(`header is not valid JSON: ${oneLine(pr.message)}`);
      case 'depth':
        throw fail(`header nests deeper than ${MAX_HEADER_DEPTH} levels; expected at most 3`);
      case 'duplicate': {
        if (pr.path.length === 0) throw fail(`duplicate tensor name ${quote(pr.key)}`, pr.key);
        const owner = String(pr.path[0]);
        if (owner === '__metadata__' && pr.path.length === 1) throw fail(`duplicate __metadata__ key ${quote(pr.key)}`);
        const where = pr.path.length > 1 ? ` in ${formatPath(pr.path.slice(1))}` : '';
        throw fail(`tensor ${quote(owner)}: duplicate key ${quote(pr.key)}${where}`, owner);
      }
      case 'number': {
        const owner = String(pr.path[0]);
        throw fail(
          `tensor ${quote(owner)}: ${formatPath(pr.path.slice(1))}: expected a non-negative integer ≤ 2^48, got ${oneLine(pr.raw, 40)}`,
          owner,
        );
      }
    }
  }

  const root = parsed.value;
  if (!isPlainObject(root)) throw fail(`header must be a JSON object, got ${jsonKind(root)}`);

  let metadata: Record<string, string> | undefined;
  interface Raw {
    name: string;
    dtype: StDType;
    shape: number[];
    begin: number;
    end: number;
  }
  const raws: Raw[] = [];

  for (const [name, value] of Object.entries(root)) {
    if (name === '__metadata__') {
      // The reference reads `Option<HashMap<String, String>>`, so null means "no metadata".
      if (value === null) continue;
      if (!isPlainObject(value)) throw fail(`__metadata__ must be an object of strings, got ${jsonKind(value)}`);
      const md: Record<string, string> = Object.create(null) as Record<string, string>;
      for (const [k, v] of Object.entries(value)) {
        if (typeof v !== 'string') {
          throw fail(`__metadata__ value for ${quote(k)}: expected a string, got ${jsonKind(v)}`);
        }
        md[k] = v;
      }
      metadata = Object.freeze(md);
      continue;
    }
    const t = (msg: string): WeightsError => fail(`tensor ${quote(name)}: ${msg}`, name);
    if (!isPlainObject(value)) throw t(`expected an object {dtype, shape, data_offsets}, got ${jsonKind(value)}`);
    for (const k of Object.keys(value)) {
      if (!(ENTRY_KEYS as readonly string[]).includes(k)) {
        throw t(`unexpected key ${quote(k)}; expected exactly dtype, shape, data_offsets`);
      }
    }
    for (const k of ENTRY_KEYS) if (!Object.hasOwn(value, k)) throw t(`missing key "${k}"`);

    const dtype = value.dtype;
    if (typeof dtype !== 'string' || !Object.hasOwn(DTYPE_BYTES, dtype)) {
      throw t(`unknown dtype ${typeof dtype === 'string' ? quote(dtype) : jsonKind(dtype)}; expected one of ${DTYPE_LIST}`);
    }
    const shape = value.shape;
    if (!Array.isArray(shape)) throw t(`shape: expected an array of integers, got ${jsonKind(shape)}`);
    shape.forEach((d, i) => {
      if (!isHeaderInt(d)) throw t(`shape[${i}]: expected a non-negative integer ≤ 2^48, got ${showValue(d)}`);
    });
    const offsets = value.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2) {
      throw t(`data_offsets: expected [begin, end], got ${Array.isArray(offsets) ? `${offsets.length} values` : jsonKind(offsets)}`);
    }
    offsets.forEach((o, i) => {
      if (!isHeaderInt(o)) throw t(`data_offsets[${i}]: expected a non-negative integer ≤ 2^48, got ${showValue(o)}`);
    });
    raws.push({ name, dtype: dtype as StDType, shape: shape as number[], begin: offsets[0] as number, end: offsets[1] as number });
  }

  // F5: sorted by (begin, end) as the reference does, the tensors must tile [0, last end) exactly.
  raws.sort((a, b) => a.begin - b.begin || a.end - b.end);
  const map = new Map<string, TensorEntry>();
  let cursor = 0;
  let prev: Raw | undefined;
  for (const r of raws) {
    const t = (msg: string): WeightsError => fail(`tensor ${quote(r.name)}: ${msg}`, r.name);
    if (r.end < r.begin) throw t(`data_offsets end ${r.end} is before begin ${r.begin}`);
    if (r.begin !== cursor) {
      if (prev === undefined) throw t(`first tensor must begin at data offset 0, got ${r.begin} (gap before it)`);
      const how = r.begin > cursor ? `gap of ${r.begin - cursor} bytes` : `overlaps it by ${cursor - r.begin} bytes`;
      throw t(
        `begins at data offset ${r.begin}, but the previous tensor ${quote(prev.name)} ends at ${cursor} (${how}); expected ${cursor}`,
      );
    }
    // F6, with BigInt so that a product of huge dims cannot overflow into a false match.
    let elems = 1n;
    for (const d of r.shape) elems *= BigInt(d);
    const want = elems * BigInt(DTYPE_BYTES[r.dtype]);
    const got = r.end - r.begin;
    if (BigInt(got) !== want) {
      throw t(
        `byte length mismatch: expected ${want} (${r.dtype} [${r.shape.join(', ')}] = ${elems} elements × ${DTYPE_BYTES[r.dtype]} bytes), got ${got} (data_offsets [${r.begin}, ${r.end}])`,
      );
    }
    map.set(
      r.name,
      Object.freeze({
        name: r.name,
        dtype: r.dtype,
        shape: Object.freeze(r.shape.slice()),
        file,
        offset: dataStart + r.begin,
        byteLength: got,
      }),
    );
    cursor = r.end;
    prev = r;
  }
  return { map, metadata, dataBytes: cursor };
}

function isHeaderInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 && v <= MAX_HEADER_INT;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function jsonKind(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  return `a ${typeof v} (${showValue(v)})`;
}

function showValue(v: unknown): string {
  if (typeof v === 'string') return quote(v);
  if (typeof v === 'number' || typeof v === 'boolean' || v === null) return String(v);
  return Array.isArray(v) ? 'an array' : 'an object';
}

function formatPath(p: readonly (string | number)[]): string {
  let s = '';
  for (const k of p) s += typeof k === 'number' ? `[${k}]` : s === '' ? k : `.${k}`;
  return s;
}

// ---------------------------------------------------------------------------------------------------------------
// JSON with the checks JSON.parse cannot make
// ---------------------------------------------------------------------------------------------------------------

export type JsonPath = readonly (string | number)[];

export type JsonProblem =
  | { readonly kind: 'syntax'; readonly message: string }
  | { readonly kind: 'depth' }
  /** `path` leads to the object holding the repeated `key` (empty: the top-level object). */
  | { readonly kind: 'duplicate'; readonly path: JsonPath; readonly key: string }
  /** A number literal `checkNumber` refused; `path` leads to it. */
  | { readonly kind: 'number'; readonly path: JsonPath; readonly raw: string };

export interface JsonCheckOptions {
  /** Nesting deeper than this is refused before anything is built (a DoS guard). */
  readonly maxDepth: number;
  /** Sees each number literal's source text; return false to refuse it. */
  readonly checkNumber?: (path: JsonPath, raw: string) => boolean;
}

interface Frame {
  readonly obj: boolean;
  keys: Set<string> | null;
  key: string;
  index: number;
  expectKey: boolean;
}

/**
 * `JSON.parse`, plus the two things it hides (F3, F4): duplicate object keys anywhere, and number literals whose
 * source text the caller refuses (JSON.parse rounds beyond 2^53 and reads `1.0000000000000001` as 1). One scan
 * over the text, robust to invalid input: syntax errors are reported by JSON.parse, which runs after the depth
 * check so a hostile nesting never gets materialized.
 */
export function parseJsonChecked(
  text: string,
  opts: JsonCheckOptions,
): { ok: true; value: unknown } | { ok: false; problem: JsonProblem } {
  const stack: Frame[] = [];
  let found: JsonProblem | undefined;
  const n = text.length;
  const pathOf = (frames: readonly Frame[]): (string | number)[] =>
    frames.map((f) => (f.obj ? f.key : f.index));
  let i = 0;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (stack.length >= opts.maxDepth) return { ok: false, problem: { kind: 'depth' } };
      stack.push({ obj: c === 0x7b, keys: null, key: '', index: 0, expectKey: c === 0x7b });
      i++;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
      i++;
    } else if (c === 0x2c /* , */) {
      const top = stack[stack.length - 1];
      if (top !== undefined) {
        if (top.obj) top.expectKey = true;
        else top.index++;
      }
      i++;
    } else if (c === 0x22 /* " */) {
      let j = i + 1;
      let escaped = false;
      while (j < n) {
        const d = text.charCodeAt(j);
        if (d === 0x5c) {
          escaped = true;
          j += 2;
        } else if (d === 0x22) break;
        else j++;
      }
      const top = stack[stack.length - 1];
      if (found === undefined && top !== undefined && top.obj && top.expectKey) {
        let key = text.slice(i + 1, Math.min(j, n));
        if (escaped) {
          try {
            key = JSON.parse(text.slice(i, j + 1)) as string; // "\u0061" and "a" are the same key
          } catch {
            // Invalid string: JSON.parse of the whole text reports it.
          }
        }
        top.keys ??= new Set();
        if (top.keys.has(key)) found = { kind: 'duplicate', path: pathOf(stack.slice(0, -1)), key };
        top.keys.add(key);
        top.key = key;
        top.expectKey = false;
      }
      i = j + 1;
    } else if (c === 0x2d /* - */ || (c >= 0x30 && c <= 0x39)) {
      let j = i + 1;
      while (j < n) {
        const d = text.charCodeAt(j);
        // digits . e E + -
        if ((d >= 0x30 && d <= 0x39) || d === 0x2e || d === 0x65 || d === 0x45 || d === 0x2b || d === 0x2d) j++;
        else break;
      }
      if (found === undefined && opts.checkNumber !== undefined) {
        const raw = text.slice(i, j);
        const p = pathOf(stack);
        if (!opts.checkNumber(p, raw)) found = { kind: 'number', path: p, raw };
      }
      i = j;
    } else {
      i++; // whitespace, ':', the letters of true/false/null, or garbage that JSON.parse will reject
    }
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return { ok: false, problem: { kind: 'syntax', message: e instanceof Error ? e.message : String(e) } };
  }
  return found === undefined ? { ok: true, value } : { ok: false, problem: found };
}
