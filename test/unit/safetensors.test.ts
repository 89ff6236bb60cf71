/**
 * Tests for src/weights/safetensors.ts: one test (at least) per SERVING.md §9 rule F1–F9, on hostile files built in
 * a temp dir, plus the well-formed edge cases the rules must keep accepting (zero-sized, 0-rank, empty header).
 */

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { DTYPE_BYTES, readSafetensorsHeader } from '../../src/weights/safetensors.js';
import { WeightsError } from '../../src/util/errors.js';
import { FIXTURES } from '../helpers/paths.js';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'lmoe-'));
after(() => fs.rmSync(TMP, { recursive: true, force: true }));

let seq = 0;
function tmpFile(name = 'model.safetensors'): string {
  const dir = path.join(TMP, `case-${seq++}`);
  fs.mkdirSync(dir);
  return path.join(dir, name);
}

interface Spec {
  name: string;
  dtype: string;
  shape: number[];
}

interface Knobs {
  metadata?: unknown;
  /** Rewrites the header JSON text before it is written (to inject raw text JSON.stringify cannot produce). */
  editText?: (json: string) => string;
  /** Rewrites the header object before it is serialized. */
  editHeader?: (h: Record<string, unknown>) => void;
  /** Header length to write instead of the real one. */
  declaredLength?: bigint;
  /** Raw header bytes instead of the serialized JSON. */
  headerBytes?: Uint8Array;
  /** Data bytes to add past the described data (or, when negative, to cut from its end). */
  extraData?: number;
  /** Spaces appended to the header, as the reference writer pads it to 8 bytes. */
  pad?: number;
}

/** Assembles a safetensors file: u64 header length, header JSON, then a data buffer with a byte pattern. */
function buildSt(tensors: Spec[], knobs: Knobs = {}): Buffer {
  const header: Record<string, unknown> = {};
  let at = 0;
  if (knobs.metadata !== undefined) header.__metadata__ = knobs.metadata;
  for (const t of tensors) {
    const size = t.shape.reduce((a, b) => a * b, 1) * (DTYPE_BYTES as Record<string, number>)[t.dtype];
    Object.defineProperty(header, t.name, {
      value: { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + size] },
      enumerable: true,
      configurable: true,
      writable: true,
    });
    at += size;
  }
  knobs.editHeader?.(header);
  let json = JSON.stringify(header);
  if (knobs.editText) json = knobs.editText(json);
  json += ' '.repeat(knobs.pad ?? 0);
  const hb = knobs.headerBytes ?? Buffer.from(json, 'utf8');
  const dataLen = Math.max(0, at + (knobs.extraData ?? 0));
  const out = Buffer.alloc(8 + hb.length + dataLen);
  out.writeBigUInt64LE(knobs.declaredLength ?? BigInt(hb.length), 0);
  out.set(hb, 8);
  for (let i = 0; i < dataLen; i++) out[8 + hb.length + i] = (i * 7 + 1) & 0xff;
  return out;
}

function write(bytes: Uint8Array, name?: string): string {
  const f = tmpFile(name);
  fs.writeFileSync(f, bytes);
  return f;
}

/** Asserts a one-line WeightsError naming the file (and tensor, when given) whose message matches `re`. */
async function rejects(file: string, re: RegExp, tensor?: string): Promise<WeightsError> {
  let caught: unknown;
  try {
    await readSafetensorsHeader(file);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof WeightsError, `expected a WeightsError, got ${String(caught)}`);
  assert.match(caught.message, re);
  assert.ok(!/[\r\n]/.test(caught.message), `one line: ${caught.message}`);
  assert.ok(caught.message.startsWith(`${path.basename(file)}: `), `names the file: ${caught.message}`);
  assert.equal(caught.file, file);
  assert.equal(caught.code, 'WEIGHTS');
  if (tensor !== undefined) assert.equal(caught.tensor, tensor);
  return caught;
}

const TWO: Spec[] = [
  { name: 'a', dtype: 'F32', shape: [2, 3] },
  { name: 'b', dtype: 'BF16', shape: [4] },
];

// ---- well-formed files ----

test('parses a valid file: entries, absolute offsets, metadata', async () => {
  const f = write(buildSt(TWO, { metadata: { format: 'pt' }, pad: 5 }));
  const h = await readSafetensorsHeader(f);
  const n = fs.readFileSync(f).readBigUInt64LE(0);
  assert.equal(h.file, f);
  assert.equal(h.fileSize, fs.statSync(f).size);
  assert.deepEqual({ ...h.metadata }, { format: 'pt' });
  assert.deepEqual([...h.tensors.keys()], ['a', 'b']);
  const a = h.tensors.get('a')!;
  assert.deepEqual(a, { name: 'a', dtype: 'F32', shape: [2, 3], file: f, offset: 8 + Number(n), byteLength: 24 });
  const b = h.tensors.get('b')!;
  assert.equal(b.offset, 8 + Number(n) + 24);
  assert.equal(b.byteLength, 8);
  assert.ok(Object.isFrozen(a) && Object.isFrozen(a.shape));
});

test('tensors are ordered by offset, not by header order', async () => {
  const f = write(
    buildSt(TWO, {
      editHeader: (h) => {
        const a = h.a;
        delete h.a;
        h.a = a; // now "b" comes first in the JSON text
      },
    }),
  );
  const h = await readSafetensorsHeader(f);
  assert.deepEqual([...h.tensors.keys()], ['a', 'b']);
});

test('F6: zero-sized and 0-rank tensors are allowed; an empty header is a valid file', async () => {
  const f = write(
    buildSt([
      { name: 'empty', dtype: 'F32', shape: [0, 4] },
      { name: 'scalar', dtype: 'F64', shape: [] },
      { name: 'empty2', dtype: 'I64', shape: [3, 0] },
      { name: 'v', dtype: 'U8', shape: [3] },
    ]),
  );
  const h = await readSafetensorsHeader(f);
  assert.equal(h.tensors.get('empty')!.byteLength, 0);
  assert.equal(h.tensors.get('empty2')!.byteLength, 0);
  assert.equal(h.tensors.get('scalar')!.byteLength, 8);
  assert.deepEqual(h.tensors.get('scalar')!.shape, []);
  assert.equal(h.tensors.size, 4);

  const e = await readSafetensorsHeader(write(buildSt([], { pad: 6 })));
  assert.equal(e.tensors.size, 0);
  assert.equal(e.metadata, undefined);
});

test('__metadata__: null means none; non-string values are refused', async () => {
  const h = await readSafetensorsHeader(write(buildSt(TWO, { metadata: null })));
  assert.equal(h.metadata, undefined);
  await rejects(write(buildSt(TWO, { metadata: { n: 1 } })), /__metadata__ value for "n": expected a string, got a number/);
  await rejects(write(buildSt(TWO, { metadata: ['x'] })), /__metadata__ must be an object of strings, got an array/);
});

test('every real fixture file parses', async () => {
  let files = 0;
  for (const dir of fs.readdirSync(FIXTURES)) {
    const d = path.join(FIXTURES, dir);
    if (!fs.statSync(d).isDirectory()) continue;
    for (const f of fs.readdirSync(d).filter((x) => x.endsWith('.safetensors'))) {
      const h = await readSafetensorsHeader(path.join(d, f));
      assert.ok(h.tensors.size > 0, f);
      files++;
    }
  }
  assert.ok(files >= 10, `found ${files} fixture files`);
});

// ---- F1: header length ----

test('F1: a file shorter than 8 bytes', async () => {
  await rejects(write(new Uint8Array([1, 2, 3, 4, 5])), /file too small: expected at least 8 bytes \(header length\), got 5/);
  await rejects(write(new Uint8Array(0)), /got 0/);
});

test('F1: a header length over 100 MB is refused before anything is allocated', async () => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(100_000_001n, 0);
  await rejects(write(b), /header length too large: expected at most 100000000 bytes, got 100000001/);
  // A length that does not even fit a double must not be converted first.
  b.writeBigUInt64LE(0xffff_ffff_ffff_ffffn, 0);
  await rejects(write(b), /got 18446744073709551615/);
});

test('F1: a header length larger than the file', async () => {
  const f = write(buildSt(TWO, { declaredLength: 100_000_000n }));
  await rejects(f, /header length 100000000 does not fit in the file: expected a file of at least 100000008 bytes, got \d+/);
  const g = write(buildSt([], { declaredLength: 3n, headerBytes: new Uint8Array(0) }));
  await rejects(g, /header length 3 does not fit/);
});

// ---- F2: UTF-8 JSON of the expected shape ----

test('F2: header that is not valid UTF-8', async () => {
  const f = write(buildSt([], { headerBytes: new Uint8Array([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]) }));
  await rejects(f, /header is not valid UTF-8/);
  // Truncated multi-byte sequence.
  await rejects(write(buildSt([], { headerBytes: Buffer.from([0x7b, 0x7d, 0xe2, 0x82]) })), /not valid UTF-8/);
});

test('F2: header that is not JSON, or has a BOM', async () => {
  await rejects(write(buildSt(TWO, { editText: (j) => j.slice(0, -1) })), /header is not valid JSON: /);
  await rejects(write(buildSt([], { headerBytes: new Uint8Array(0), declaredLength: 0n })), /header is not valid JSON/);
  await rejects(write(buildSt(TWO, { editText: (j) => `\ufeff${j}` })), /header is not valid JSON/);
  // JSON.parse's message quotes the text; a newline in it must not break the one-line rule (checked by rejects).
  await rejects(write(buildSt(TWO, { editText: (j) => `${j}\n\nx` })), /header is not valid JSON/);
});

test('F2: header that is not an object', async () => {
  await rejects(write(buildSt([], { editText: () => '[]' })), /header must be a JSON object, got an array/);
  await rejects(write(buildSt([], { editText: () => 'null' })), /header must be a JSON object, got null/);
  await rejects(write(buildSt([], { editText: () => '"x"' })), /header must be a JSON object, got a string/);
  await rejects(write(buildSt([], { editText: () => '12' })), /got a number/);
});

test('F2: entry that is not an object, has an extra key, or misses one', async () => {
  await rejects(write(buildSt([], { editText: () => '{"w":[1,2]}' })), /tensor "w": expected an object \{dtype, shape, data_offsets\}, got an array/, 'w');
  await rejects(
    write(buildSt(TWO, { editHeader: (h) => ((h.a as Record<string, unknown>).extra = 1) })),
    /tensor "a": unexpected key "extra"; expected exactly dtype, shape, data_offsets/,
    'a',
  );
  await rejects(
    write(buildSt(TWO, { editHeader: (h) => delete (h.b as Record<string, unknown>).shape })),
    /tensor "b": missing key "shape"/,
    'b',
  );
  await rejects(
    write(buildSt(TWO, { editHeader: (h) => ((h.a as Record<string, unknown>).data_offsets = [0, 24, 24]) })),
    /tensor "a": data_offsets: expected \[begin, end\], got 3 values/,
  );
});

test('F2: unknown dtype lists the allowed ones', async () => {
  const e = await rejects(
    write(buildSt(TWO, { editHeader: (h) => ((h.b as Record<string, unknown>).dtype = 'F4') })),
    /tensor "b": unknown dtype "F4"; expected one of BOOL, U8, I8, F8_E4M3, F8_E5M2, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64/,
    'b',
  );
  assert.ok(e.message.length < 400);
  await rejects(
    write(buildSt(TWO, { editHeader: (h) => ((h.b as Record<string, unknown>).dtype = 'f32') })),
    /unknown dtype "f32"/,
  );
  await rejects(
    write(buildSt(TWO, { editHeader: (h) => ((h.b as Record<string, unknown>).dtype = 4) })),
    /unknown dtype a number \(4\)/,
  );
});

// ---- F3: exact integers ----

test('F3: shape entries must be non-negative integers within 2^48, judged on the raw text', async () => {
  const cases: [string, RegExp][] = [
    ['-1', /shape\[0\]: expected a non-negative integer ≤ 2\^48, got -1/],
    ['1.5', /got 1\.5/],
    ['2.0', /got 2\.0/], // a float literal, even when integral (the reference reads usize)
    ['2e0', /got 2e0/],
    ['9007199254740993', /got 9007199254740993/], // JSON.parse would read 2^53 here
    ['281474976710657', /got 281474976710657/], // 2^48 + 1
    ['1.0000000000000001', /got 1\.0000000000000001/], // JSON.parse reads exactly 1
    ['-0', /got -0/],
  ];
  for (const [raw, re] of cases) {
    const f = write(buildSt([{ name: 'w', dtype: 'U8', shape: [1] }], { editText: (j) => j.replace('"shape":[1]', `"shape":[${raw}]`) }));
    await rejects(f, re, 'w');
  }
  const s = write(buildSt([{ name: 'w', dtype: 'U8', shape: [1] }], { editText: (j) => j.replace('"shape":[1]', '"shape":["1"]') }));
  await rejects(s, /tensor "w": shape\[0\]: expected a non-negative integer ≤ 2\^48, got "1"/, 'w');
  const t = write(buildSt([{ name: 'w', dtype: 'U8', shape: [1] }], { editText: (j) => j.replace('"shape":[1]', '"shape":4') }));
  await rejects(t, /tensor "w": shape: expected an array of integers, got a number/, 'w');
});

test('F3: offsets must be exact non-negative integers', async () => {
  const base: Spec[] = [{ name: 'w', dtype: 'U8', shape: [1] }];
  await rejects(
    write(buildSt(base, { editText: (j) => j.replace('"data_offsets":[0,1]', '"data_offsets":[0,1.0]') })),
    /tensor "w": data_offsets\[1\]: expected a non-negative integer ≤ 2\^48, got 1\.0/,
    'w',
  );
  await rejects(
    write(buildSt(base, { editText: (j) => j.replace('"data_offsets":[0,1]', '"data_offsets":[-1,1]') })),
    /data_offsets\[0\]: .* got -1/,
  );
  await rejects(
    write(buildSt(base, { editText: (j) => j.replace('"data_offsets":[0,1]', '"data_offsets":[0,18446744073709551617]') })),
    /data_offsets\[1\]: .* got 18446744073709551617/,
  );
});

test('F6: a product of dims that overflows 2^64 cannot alias a small length', async () => {
  // 2^32 × 2^32 × 1 byte = 2^64, which wraps to 0 in u64 arithmetic; BigInt sees the mismatch.
  const f = write(
    buildSt([], { editText: () => '{"w":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}}' }),
  );
  await rejects(f, /tensor "w": byte length mismatch: expected 18446744073709551616 .* got 0/, 'w');
});

// ---- F4: duplicate keys, __proto__ ----

test('F4: duplicate tensor names are refused', async () => {
  const dup = '{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}';
  const f = write(buildSt([], { editText: () => dup, extraData: 2 }));
  await rejects(f, /duplicate tensor name "w"/, 'w');
  // The same name spelled with an escape is the same key.
  const esc = '{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"\\u0077":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}';
  await rejects(write(buildSt([], { editText: () => esc, extraData: 2 })), /duplicate tensor name "w"/);
  // And inside an entry, and in the metadata.
  const inEntry = '{"w":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}}';
  await rejects(write(buildSt([], { editText: () => inEntry, extraData: 1 })), /tensor "w": duplicate key "dtype"/, 'w');
  const inMeta = '{"__metadata__":{"k":"1","k":"2"}}';
  await rejects(write(buildSt([], { editText: () => inMeta })), /duplicate __metadata__ key "k"/);
});

test('F4: a tensor named __proto__ is an ordinary, inert name', async () => {
  const text =
    '{"__metadata__":{"__proto__":"x"},"__proto__":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' +
    '"constructor":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}';
  const f = write(buildSt([], { editText: () => text, extraData: 6 }));
  const h = await readSafetensorsHeader(f);
  assert.deepEqual([...h.tensors.keys()], ['__proto__', 'constructor']);
  assert.equal(h.tensors.get('__proto__')!.byteLength, 4);
  assert.equal(h.tensors.get('constructor')!.byteLength, 2);
  assert.equal(h.tensors.get('toString'), undefined);
  assert.equal(h.metadata!['__proto__'], 'x');
  assert.equal(({} as Record<string, unknown>).dtype, undefined, 'Object.prototype untouched');
  assert.equal(Object.getPrototypeOf(h.metadata), null);
});

test('depth bomb is refused without building it', async () => {
  const deep = `${'['.repeat(100_000)}${']'.repeat(100_000)}`;
  await rejects(write(buildSt([], { editText: () => deep })), /header nests deeper than 8 levels/);
});

// ---- F5: contiguous, no gaps, no overlap ----

function offsets(spec: Record<string, [number, number]>): (h: Record<string, unknown>) => void {
  return (h) => {
    for (const [k, v] of Object.entries(spec)) (h[k] as Record<string, unknown>).data_offsets = v;
  };
}

test('F5: the first tensor must begin at 0', async () => {
  const f = write(buildSt([{ name: 'w', dtype: 'U8', shape: [2] }], { editHeader: offsets({ w: [1, 3] }), extraData: 1 }));
  await rejects(f, /tensor "w": first tensor must begin at data offset 0, got 1/, 'w');
});

test('F5: a gap between tensors', async () => {
  // a: [0,24), b moved to [32,40): 8 unused bytes between them.
  const f = write(buildSt(TWO, { editHeader: offsets({ b: [32, 40] }), extraData: 8 }));
  await rejects(f, /tensor "b": begins at data offset 32, but the previous tensor "a" ends at 24 \(gap of 8 bytes\); expected 24/, 'b');
});

test('F5: overlapping tensors', async () => {
  const f = write(buildSt(TWO, { editHeader: offsets({ b: [16, 24] }), extraData: -8 }));
  await rejects(f, /tensor "b": begins at data offset 16, but the previous tensor "a" ends at 24 \(overlaps it by 8 bytes\)/, 'b');
  // Two tensors aliasing the same bytes.
  const g = write(
    buildSt([
      { name: 'x', dtype: 'F32', shape: [2] },
      { name: 'y', dtype: 'F32', shape: [2] },
    ], { editHeader: offsets({ y: [0, 8] }), extraData: -8 }),
  );
  await rejects(g, /overlaps it by 8 bytes/);
});

test('F5: end before begin', async () => {
  const f = write(buildSt([{ name: 'w', dtype: 'U8', shape: [0] }], { editHeader: offsets({ w: [4, 0] }) }));
  await rejects(f, /tensor "w": data_offsets end 0 is before begin 4/, 'w');
});

// ---- F6: byte length = dtype size × elements ----

test('F6: byte length must equal product(shape) × dtype size', async () => {
  const f = write(buildSt(TWO, { editHeader: (h) => ((h.b as Record<string, unknown>).dtype = 'F32') }));
  await rejects(f, /tensor "b": byte length mismatch: expected 16 \(F32 \[4\] = 4 elements × 4 bytes\), got 8 \(data_offsets \[24, 32\]\)/, 'b');
  const g = write(buildSt(TWO, { editHeader: (h) => ((h.a as Record<string, unknown>).shape = [3, 3]) }));
  await rejects(g, /tensor "a": byte length mismatch: expected 36/, 'a');
  const z = write(buildSt(TWO, { editHeader: (h) => ((h.a as Record<string, unknown>).shape = []) }));
  await rejects(z, /tensor "a": byte length mismatch: expected 4 \(F32 \[\] = 1 elements/, 'a');
});

// ---- F7: exact file length ----

test('F7: trailing bytes after the last tensor', async () => {
  const f = write(buildSt(TWO, { extraData: 3 }));
  const size = fs.statSync(f).size;
  await rejects(f, new RegExp(`trailing data after the last tensor: expected ${size - 3} bytes .*, got ${size}`));
});

test('F7: a truncated file says so, with expected and actual sizes', async () => {
  const full = buildSt(TWO);
  const f = write(full.subarray(0, full.length - 5));
  await rejects(f, new RegExp(`file is truncated: expected ${full.length} bytes \\(8 \\+ header \\d+ \\+ data 32\\), got ${full.length - 5}`));
});

// ---- F9: Git LFS pointers ----

test('F9: a Git LFS pointer gets its own error', async () => {
  const ptr =
    'version https://git-lfs.github.com/spec/v1\n' +
    'oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n' +
    'size 9948693272\n';
  const e = await rejects(write(Buffer.from(ptr)), /is a Git LFS pointer, not the weights \(pointer to a 9948693272-byte object\): the weights were not downloaded \(run `git lfs pull`\)/);
  assert.doesNotMatch(e.message, /header length/);
});

// ---- plumbing ----

test('a missing file or a directory is a WeightsError', async () => {
  const missing = path.join(TMP, 'nope.safetensors');
  await rejects(missing, /cannot open: ENOENT/);
  const dir = tmpFile('dir.safetensors');
  fs.mkdirSync(dir);
  await assert.rejects(readSafetensorsHeader(dir), WeightsError);
});

test('names with newlines stay on one line in messages', async () => {
  const text = '{"a\\nb":{"dtype":"U8","shape":[2],"data_offsets":[0,1]}}';
  const e = await rejects(write(buildSt([], { editText: () => text, extraData: 1 })), /tensor "a\\nb": byte length mismatch/);
  assert.equal(e.tensor, 'a\nb');
});
