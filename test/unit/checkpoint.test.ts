/**
 * Tests for src/weights/checkpoint.ts: loading the fixture checkpoints (single file and sharded), decoding and
 * streaming tensor bytes, and the SERVING.md §9 F10 shard rules (plain names, no escaping symlinks, header/index
 * agreement, total_size) on hostile copies of the `tiny` fixture built in a temp dir.
 */

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { Checkpoint } from '../../src/weights/checkpoint.js';
import { DisposedError, InvalidArgumentError, WeightsError } from '../../src/util/errors.js';
import { FIXTURES } from '../helpers/paths.js';

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'lmoe-'));
after(() => fs.rmSync(TMP, { recursive: true, force: true }));

const INDEX = 'model.safetensors.index.json';
const SHARD1 = 'model-00001-of-00002.safetensors';
const SHARD2 = 'model-00002-of-00002.safetensors';

let seq = 0;
function tmpDir(): string {
  const d = path.join(TMP, `ckpt-${seq++}`);
  fs.mkdirSync(d);
  return d;
}

/** A copy of the sharded `tiny` fixture whose index can be edited. */
function tinyCopy(editIndex?: (idx: { metadata?: Record<string, unknown>; weight_map: Record<string, string> }) => void): string {
  const d = tmpDir();
  for (const f of [SHARD1, SHARD2]) fs.copyFileSync(path.join(FIXTURES, 'tiny', f), path.join(d, f));
  const idx = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'tiny', INDEX), 'utf8'));
  editIndex?.(idx);
  fs.writeFileSync(path.join(d, INDEX), JSON.stringify(idx, null, 2));
  return d;
}

/** Writes a minimal valid safetensors file holding `tensors` (data given as raw little-endian bytes). */
function writeSt(file: string, tensors: { name: string; dtype: string; shape: number[]; data: Uint8Array }[]): void {
  const header: Record<string, unknown> = {};
  let at = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.data.length] };
    at += t.data.length;
  }
  const hb = Buffer.from(JSON.stringify(header));
  const out = Buffer.alloc(8 + hb.length + at);
  out.writeBigUInt64LE(BigInt(hb.length), 0);
  hb.copy(out, 8);
  let p = 8 + hb.length;
  for (const t of tensors) {
    out.set(t.data, p);
    p += t.data.length;
  }
  fs.writeFileSync(file, out);
}

async function openRejects(dir: string, re: RegExp, tensor?: string): Promise<WeightsError> {
  let caught: unknown;
  try {
    const c = await Checkpoint.open(dir);
    await c.close();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof WeightsError, `expected a WeightsError, got ${String(caught)}`);
  assert.match(caught.message, re);
  assert.ok(!/[\r\n]/.test(caught.message), `one line: ${caught.message}`);
  if (tensor !== undefined) assert.equal(caught.tensor, tensor);
  return caught;
}

function dtypeCounts(c: Checkpoint): Record<string, number> {
  const out: Record<string, number> = {};
  for (const e of c.tensors.values()) out[e.dtype] = (out[e.dtype] ?? 0) + 1;
  return out;
}

/** bf16 → f32 by hand (bits << 16 through a DataView), independent of src/util/dtype.ts. */
function manualBf16(bytes: Uint8Array): Float32Array {
  const src = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(bytes.byteLength / 2);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < out.length; i++) dv.setUint32(i * 4, src.getUint16(i * 2, true) * 65536, true);
  return out;
}

// ---- the fixtures ----

test('tiny: two shards through the index, all F32', async () => {
  const c = await Checkpoint.open(path.join(FIXTURES, 'tiny'));
  try {
    assert.equal(c.dir, path.join(FIXTURES, 'tiny'));
    assert.deepEqual(c.files, [path.join(FIXTURES, 'tiny', SHARD1), path.join(FIXTURES, 'tiny', SHARD2)]);
    assert.equal(c.tensors.size, 189);
    assert.deepEqual(dtypeCounts(c), { F32: 189 });
    assert.ok(!c.tensors.has('p0.ids'), 'expected.safetensors is not part of the model');
    const emb = c.get('model.embed_tokens.weight');
    assert.equal(emb.shape.length, 2);
    const bytes = await c.read('model.embed_tokens.weight');
    assert.equal(bytes.length, emb.byteLength);
    const f = await c.readFloat32('model.embed_tokens.weight');
    assert.deepEqual(f, new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)));
  } finally {
    await c.close();
  }
});

test('tiny-bf16: single file; readFloat32 of a BF16 tensor equals the manual conversion', async () => {
  const c = await Checkpoint.open(path.join(FIXTURES, 'tiny-bf16'));
  try {
    assert.equal(c.files.length, 1);
    assert.equal(path.basename(c.files[0]), 'model.safetensors');
    assert.equal(c.tensors.size, 189);
    assert.deepEqual(dtypeCounts(c), { BF16: 183, F32: 6 });
    let checked = 0;
    for (const [name, e] of c.tensors) {
      if (e.dtype !== 'BF16') continue;
      const got = await c.readFloat32(name);
      const want = manualBf16(await c.read(name));
      assert.equal(got.length, e.shape.reduce((a, b) => a * b, 1));
      assert.deepEqual(got, want, name);
      if (++checked === 12) break;
    }
    // Routers stay F32 in this checkpoint.
    assert.equal(c.get('model.layers.0.block_sparse_moe.gate.weight').dtype, 'F32');
  } finally {
    await c.close();
  }
});

test('tiny-hf and small-d128 load with the expected tensor sets', async () => {
  const hf = await Checkpoint.open(path.join(FIXTURES, 'tiny-hf'));
  assert.equal(hf.tensors.size, 57);
  assert.deepEqual(dtypeCounts(hf), { F32: 57 });
  await hf.close();

  const small = await Checkpoint.open(path.join(FIXTURES, 'small-d128'));
  assert.equal(small.files.length, 2);
  assert.equal(small.tensors.size, 127);
  assert.deepEqual(dtypeCounts(small), { BF16: 123, F32: 4 });
  let total = 0;
  for (const e of small.tensors.values()) total += e.byteLength;
  assert.equal(total, 12099072, 'matches metadata.total_size');
  await small.close();
});

test('chunks() with a tiny chunk size yields the same bytes as read()', async () => {
  const c = await Checkpoint.open(path.join(FIXTURES, 'small-d128'));
  try {
    const name = 'model.embed_tokens.weight';
    const whole = await c.read(name);
    for (const size of [7, 4096, whole.length, whole.length + 1]) {
      const parts: Uint8Array[] = [];
      for await (const chunk of c.chunks(name, size)) {
        assert.ok(chunk.length > 0 && chunk.length <= size);
        parts.push(chunk.slice()); // chunks are only valid until the next step
      }
      assert.equal(parts.length, Math.ceil(whole.length / size));
      assert.deepEqual(Buffer.concat(parts), Buffer.from(whole));
    }
    assert.throws(() => c.chunks(name, 0), InvalidArgumentError);
    assert.throws(() => c.chunks(name, 1.5), InvalidArgumentError);
    assert.throws(() => c.chunks(name, 2 ** 30 + 1), InvalidArgumentError);
  } finally {
    await c.close();
  }
});

test('unknown tensors, non-float dtypes, and use after close', async () => {
  const d = tmpDir();
  const ids = new Uint8Array(new BigInt64Array([1n, 2n, 3n]).buffer);
  const halves = new Uint8Array(new Uint16Array([0x3c00, 0x0001, 0xfc00]).buffer);
  const doubles = new Uint8Array(new Float64Array([1.5, 1e40, -0.25]).buffer);
  writeSt(path.join(d, 'model.safetensors'), [
    { name: 'ids', dtype: 'I64', shape: [3], data: ids },
    { name: 'h', dtype: 'F16', shape: [3], data: halves },
    { name: 'd', dtype: 'F64', shape: [3], data: doubles },
    { name: 'z', dtype: 'BF16', shape: [0], data: new Uint8Array(0) },
  ]);
  const c = await Checkpoint.open(d);
  assert.deepEqual([...(await c.readFloat32('h'))], [1, 2 ** -24, -Infinity]);
  assert.deepEqual([...(await c.readFloat32('d'))], [1.5, Infinity, -0.25]);
  assert.equal((await c.readFloat32('z')).length, 0);
  assert.equal((await c.read('z')).length, 0);
  assert.deepEqual(await c.read('ids'), ids);
  await assert.rejects(c.readFloat32('ids'), (e: unknown) => {
    assert.ok(e instanceof WeightsError);
    assert.match(e.message, /model\.safetensors: tensor "ids": expected dtype F32, BF16, F16 or F64 for readFloat32, got I64/);
    assert.equal(e.tensor, 'ids');
    return true;
  });
  await assert.rejects(c.read('nope'), (e: unknown) => e instanceof WeightsError && e.tensor === 'nope' && /no tensor "nope"/.test(e.message));
  await c.close();
  await c.close(); // idempotent
  await assert.rejects(c.read('ids'), DisposedError);
  assert.throws(() => c.chunks('ids'), DisposedError);
});

test('a shard truncated after open is reported as truncated', async () => {
  const d = tinyCopy();
  const c = await Checkpoint.open(d);
  try {
    const names = [...c.tensors.values()].filter((e) => path.basename(e.file) === SHARD2);
    const first = names[0];
    const last = names[names.length - 1];
    await c.read(first.name); // opens the handle while the file is intact
    fs.truncateSync(path.join(d, SHARD2), last.offset + 1);
    await assert.rejects(c.read(last.name), (e: unknown) => {
      assert.ok(e instanceof WeightsError);
      assert.match(e.message, /model-00002-of-00002\.safetensors: truncated: tensor ".*" expected \d+ more bytes at byte \d+, got 0/);
      return true;
    });
  } finally {
    await c.close();
  }
  // A file that changed before its handle was opened is caught by the size check.
  const d2 = tinyCopy();
  const c2 = await Checkpoint.open(d2);
  fs.truncateSync(path.join(d2, SHARD1), 100);
  await assert.rejects(c2.read('model.embed_tokens.weight'), /file changed since its header was read: expected \d+ bytes, got 100/);
  await c2.close();
});

// ---- resolution ----

test('a directory with neither file is refused, even with other *.safetensors in it', async () => {
  const d = tmpDir();
  fs.copyFileSync(path.join(FIXTURES, 'tiny', 'expected.safetensors'), path.join(d, 'expected.safetensors'));
  await openRejects(d, new RegExp(`no model\\.safetensors or model\\.safetensors\\.index\\.json in ${d.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  await openRejects(path.join(TMP, 'does-not-exist'), /model directory .* cannot be read: ENOENT/);
  const f = path.join(d, 'expected.safetensors');
  await openRejects(f, /is not a directory/);
});

test('a copied sharded checkpoint loads (the baseline for the hostile variants)', async () => {
  const c = await Checkpoint.open(tinyCopy());
  assert.equal(c.tensors.size, 189);
  await c.close();
});

test('F10: a shard listed in the index but absent', async () => {
  const d = tinyCopy();
  fs.rmSync(path.join(d, SHARD2));
  await openRejects(d, /missing shard model-00002-of-00002\.safetensors \(listed in model\.safetensors\.index\.json\)/);
});

test('F10: shard names must be plain file names', async () => {
  const outside = path.join(TMP, 'outside.safetensors');
  fs.copyFileSync(path.join(FIXTURES, 'tiny', SHARD2), outside);
  const bad: [string, RegExp][] = [
    [`../${path.basename(TMP)}/outside.safetensors`, /contains a path separator/],
    [outside, /contains a path separator/],
    ['sub\\x.safetensors', /contains a path separator/],
    ['..', /a directory reference/],
    ['', /empty/],
    ['C:x.safetensors', /a Windows drive path/],
  ];
  for (const [name, why] of bad) {
    const d = tinyCopy((idx) => {
      for (const k of Object.keys(idx.weight_map)) if (idx.weight_map[k] === SHARD2) idx.weight_map[k] = name;
    });
    const e = await openRejects(d, /model\.safetensors\.index\.json: weight_map\[".*"\]: expected a plain file name inside the model directory/);
    assert.match(e.message, why);
    assert.ok(e.tensor !== undefined);
  }
  const d = tinyCopy((idx) => {
    (idx.weight_map as Record<string, unknown>)['lm_head.weight'] = 3;
  });
  await openRejects(d, /weight_map\["lm_head\.weight"\]: expected a shard file name, got number 3/, 'lm_head.weight');
});

test('F10: a shard symlink that leaves the model directory', async () => {
  const d = tinyCopy();
  const outside = path.join(tmpDir(), SHARD2);
  fs.renameSync(path.join(d, SHARD2), outside);
  fs.symlinkSync(outside, path.join(d, SHARD2));
  await openRejects(d, /model-00002-of-00002\.safetensors: resolves to .*, outside the model directory/);

  // A symlink that stays inside the directory is fine.
  const ok = tinyCopy();
  fs.renameSync(path.join(ok, SHARD2), path.join(ok, 'real-shard.bin'));
  fs.symlinkSync('real-shard.bin', path.join(ok, SHARD2));
  const c = await Checkpoint.open(ok);
  assert.equal(c.tensors.size, 189);
  await c.close();

  // And a dangling one says so.
  const dang = tinyCopy();
  fs.rmSync(path.join(dang, SHARD2));
  fs.symlinkSync('gone.bin', path.join(dang, SHARD2));
  await openRejects(dang, /model-00002-of-00002\.safetensors: broken symlink/);
});

test('F10: a single model.safetensors symlinked from elsewhere is refused too', async () => {
  const d = tmpDir();
  fs.symlinkSync(path.join(FIXTURES, 'tiny-bf16', 'model.safetensors'), path.join(d, 'model.safetensors'));
  await openRejects(d, /model\.safetensors: resolves to .*, outside the model directory/);
});

test('F10: a tensor in the index but not in its shard', async () => {
  const d = tinyCopy((idx) => {
    idx.weight_map.ghost = SHARD1;
  });
  await openRejects(d, /model-00001-of-00002\.safetensors: model\.safetensors\.index\.json maps tensor "ghost" to model-00001-of-00002\.safetensors, but model-00001-of-00002\.safetensors does not contain it/, 'ghost');
});

test('F10: a tensor in a shard but not in the index', async () => {
  const d = tinyCopy((idx) => {
    delete idx.weight_map['lm_head.weight'];
  });
  await openRejects(d, /model-00001-of-00002\.safetensors: tensor "lm_head\.weight" is not listed in model\.safetensors\.index\.json/, 'lm_head.weight');
});

test('F10: a tensor the index maps to another shard', async () => {
  const d = tinyCopy((idx) => {
    idx.weight_map['lm_head.weight'] = SHARD2;
  });
  await openRejects(d, /tensor "lm_head\.weight" is in model-00001-of-00002\.safetensors, but model\.safetensors\.index\.json maps it to model-00002-of-00002\.safetensors/, 'lm_head.weight');
});

test('F10: metadata.total_size must match the shards', async () => {
  const d = tinyCopy((idx) => {
    idx.metadata = { total_size: 1610177 };
  });
  await openRejects(d, /model\.safetensors\.index\.json: metadata\.total_size: expected 1610176 \(the bytes of tensor data in the shards\), got 1610177/);
  const none = tinyCopy((idx) => {
    delete idx.metadata;
  });
  const c = await Checkpoint.open(none);
  await c.close();
  const str = tinyCopy((idx) => {
    idx.metadata = { total_size: '1610176' };
  });
  await openRejects(str, /metadata\.total_size: expected a non-negative integer, got "1610176"/);
});

test('F10: malformed index files name the index', async () => {
  const cases: [string, RegExp][] = [
    ['{"weight_map": {', /model\.safetensors\.index\.json: invalid JSON: /],
    ['[]', /model\.safetensors\.index\.json: expected a JSON object, got an array/],
    ['{"metadata": {}}', /model\.safetensors\.index\.json: missing "weight_map"/],
    ['{"weight_map": []}', /weight_map: expected an object, got an array/],
    ['{"weight_map": {}}', /weight_map is empty/],
    [
      `{"weight_map": {"lm_head.weight": "${SHARD1}", "lm_head.weight": "${SHARD2}"}}`,
      /tensor "lm_head\.weight" is listed twice in weight_map/,
    ],
  ];
  for (const [text, re] of cases) {
    const d = tinyCopy();
    fs.writeFileSync(path.join(d, INDEX), text);
    await openRejects(d, re);
  }
});

test('F9 through a checkpoint: an LFS pointer shard', async () => {
  const d = tinyCopy();
  fs.writeFileSync(path.join(d, SHARD2), 'version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 631544\n');
  await openRejects(d, /model-00002-of-00002\.safetensors: is a Git LFS pointer, not the weights.*git lfs pull/);
});

test('__proto__ as a tensor name in index and shard is an ordinary name', async () => {
  const d = tmpDir();
  const data = new Uint8Array(new Float32Array([1, 2]).buffer);
  writeSt(path.join(d, 'shard-a.safetensors'), [{ name: 'x', dtype: 'F32', shape: [2], data }]);
  // JSON.stringify skips a "__proto__" set by assignment, so build this header by hand.
  const hb = Buffer.from('{"__proto__":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}');
  const out = Buffer.alloc(8 + hb.length + 8);
  out.writeBigUInt64LE(BigInt(hb.length), 0);
  hb.copy(out, 8);
  out.set(data, 8 + hb.length);
  fs.writeFileSync(path.join(d, 'shard-b.safetensors'), out);
  fs.writeFileSync(path.join(d, INDEX), '{"weight_map":{"x":"shard-a.safetensors","__proto__":"shard-b.safetensors"}}');
  const c = await Checkpoint.open(d);
  assert.deepEqual([...c.tensors.keys()].sort(), ['__proto__', 'x']);
  assert.deepEqual([...(await c.readFloat32('__proto__'))], [1, 2]);
  await c.close();
});
